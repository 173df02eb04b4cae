"""The HTTP listener of core/observe/http.py and the metrics handler over it (docs/metrics.md).

A real listener on 127.0.0.1 (port 0) in this process, spoken to over real sockets (and real
TLS with certificates of a dev CA); the request-head parser is table-tested on its own. Each
limit has a test that crosses it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from typing import Any, Awaitable, Callable

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kolk.observe.http import (HttpLimits, HttpListener, HttpRequest, HttpResponse, parse_head,  # noqa: E402
                               parse_listen_address, serve_http)
from kolk.observe.metrics_server import start_metrics_listener  # noqa: E402
from kolk.observe.process_metrics import LoopLagMonitor, ProcessCollector  # noqa: E402
from kolk.security.tls import TlsConfig  # noqa: E402
from kolk.transport import InvalidAddressError  # noqa: E402

DEADLINE_S = 10.0
LIMITS = HttpLimits()


def run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(fn())


async def exchange(address: str, raw: bytes, context: ssl.SSLContext | None = None) -> bytes:
    """Send ``raw``, read the whole answer (the listener closes after it)."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), ssl=context,
                                                   server_hostname="127.0.0.1" if context else None)
    try:
        writer.write(raw)
        async with asyncio.timeout(DEADLINE_S):
            return await reader.read()
    finally:
        writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[1]


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode()


class Recorder:
    """A handler that answers with what it was asked, and remembers every request."""

    def __init__(self) -> None:
        self.requests: list[HttpRequest] = []

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        self.requests.append(request)
        if request.path == "/boom":
            raise RuntimeError("the handler broke")
        if request.path == "/slow":
            await asyncio.sleep(60)  # longer than the handler limit of the test that asks for it
        if request.path == "/bad-header":
            return HttpResponse(200, b"x", headers=(("X-Split", "a\r\nInjected: yes"),))
        if request.path != "/echo":
            return HttpResponse(404, b"no such path\n")
        return HttpResponse(200, f"{request.path} {request.query} {request.identity}".encode())


async def listening(handler: Any, limits: HttpLimits = LIMITS, tls: TlsConfig | None = None) -> HttpListener:
    return await serve_http("127.0.0.1:0", handler, tls=tls, name="test", limits=limits)


# ---------------------------------------------------------------- the request head, alone

BAD_HEADS = [
    (b"GET /", 400, "malformed request line"),
    (b"GET  / HTTP/1.1", 400, "malformed request line"),
    (b"G(T / HTTP/1.1", 400, "malformed request line"),
    (b"GET / HTTP/2.0", 505, "only HTTP/1.0 and HTTP/1.1"),
    (b"POST / HTTP/1.1", 405, "method POST is not allowed"),
    (b"DELETE /metrics HTTP/1.1", 405, "only GET and HEAD"),
    (b"GET http://x/metrics HTTP/1.1", 400, "must be a path starting with '/'"),
    (b"GET /a#b HTTP/1.1", 400, "must be a path starting with '/'"),
    (b"GET /\xc3\xa9 HTTP/1.1", 400, "must be ASCII"),
    (b"GET /%ff HTTP/1.1", 400, "not UTF-8 once percent-decoded"),
    (b"GET /a%00b HTTP/1.1", 400, "contains a NUL"),
    (b"GET /?q=%ff HTTP/1.1", 400, "query string is not UTF-8"),
    (b"GET /?" + b"&".join(b"k%d=v" % i for i in range(101)) + b" HTTP/1.1", 400, "more than 100 fields"),
    (b"GET / HTTP/1.1\r\nno colon here", 400, "malformed header line"),
    (b"GET / HTTP/1.1\r\nHost : x", 400, "malformed header line"),
    (b"GET / HTTP/1.1\r\n folded: x", 400, "malformed header line"),
    (b"GET / HTTP/1.1" + b"\r\nX: y" * 101, 431, "more than 100 header lines"),
    (b"GET / HTTP/1.1\r\nContent-Length: 5", 400, "carry no body"),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked", 400, "carry no body"),
]


@pytest.mark.parametrize("head,status,why", BAD_HEADS, ids=[w + f"-{i}" for i, (_, _, w) in enumerate(BAD_HEADS)])
def test_a_bad_request_head_is_answered_with_its_status_and_one_line(head: bytes, status: int, why: str) -> None:
    answer = parse_head(head, LIMITS)
    assert isinstance(answer, HttpResponse), answer
    assert answer.status == status
    assert why in answer.body.decode()
    assert answer.body.count(b"\n") == 1 and answer.body.endswith(b"\n")
    if status == 405:
        assert ("Allow", "GET, HEAD") in answer.headers


def test_a_good_request_head_is_decoded() -> None:
    request = parse_head(b"HEAD /topics/my%20topic?x=1&x=2&y= HTTP/1.0\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n"
                         b"Content-Length: 0", LIMITS)
    assert request == HttpRequest("HEAD", "/topics/my topic", {"x": ["1", "2"], "y": [""]},
                                  {"host": "h", "x-a": "1, 2", "content-length": "0"})


def test_limits_and_addresses_are_checked() -> None:
    with pytest.raises(ValueError, match="connections_max must be at least 1"):
        HttpLimits(connections_max=0)
    with pytest.raises(ValueError, match="head_read_timeout_s must be more than 0"):
        HttpLimits(head_read_timeout_s=0)
    assert parse_listen_address("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_listen_address("[::1]:9100") == ("::1", 9100)
    for bad in ("localhost", "127.0.0.1:99999", "bad host:1", ":0", ""):
        with pytest.raises(InvalidAddressError, match="invalid address"):
            parse_listen_address(bad)


# ---------------------------------------------------------------- the listener, over sockets

def test_requests_reach_the_handler_and_answers_are_http() -> None:
    async def body() -> None:
        handler = Recorder()
        listener = await listening(handler)
        try:
            answer = await exchange(listener.address, get("/echo?a=1&b=x%20y"))
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"\r\nConnection: close\r\n" in answer and b"\r\nContent-Length: " in answer
            assert body_of(answer) == b"/echo {'a': ['1'], 'b': ['x y']} None"
            assert handler.requests[0].peer.startswith("127.0.0.1:")
            assert handler.requests[0].headers["host"] == "test"
            head = await exchange(listener.address, b"HEAD /echo HTTP/1.1\r\n\r\n")
            assert status_of(head) == 200 and body_of(head) == b""
            assert b"Content-Length: 13\r\n" in head  # the length of the GET body, "/echo {} None"
            assert status_of(await exchange(listener.address, get("/nowhere"))) == 404
        finally:
            await listener.close()
    run(body)


def test_a_method_other_than_get_or_head_is_405_and_never_reaches_the_handler() -> None:
    async def body() -> None:
        handler = Recorder()
        listener = await listening(handler)
        try:
            answer = await exchange(listener.address, b"POST /echo HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            assert status_of(answer) == 405 and b"\r\nAllow: GET, HEAD\r\n" in answer
            assert handler.requests == []
        finally:
            await listener.close()
    run(body)


def test_a_head_larger_than_the_limit_is_431() -> None:
    async def body() -> None:
        listener = await listening(Recorder())
        try:
            big = b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * LIMITS.head_bytes_max + b"\r\n\r\n"
            answer = await exchange(listener.address, big)
            assert status_of(answer) == 431
            assert body_of(answer) == f"the request head is larger than {LIMITS.head_bytes_max} bytes\n".encode()
            # Just within the limit is served.
            filler = LIMITS.head_bytes_max - len(b"GET /echo HTTP/1.1\r\nX-Big: \r\n\r\n")
            fits = b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * filler + b"\r\n\r\n"
            assert len(fits) == LIMITS.head_bytes_max
            assert status_of(await exchange(listener.address, fits)) == 200
        finally:
            await listener.close()
    run(body)


def test_a_failing_handler_is_500_logged_once_and_the_listener_keeps_serving(caplog: Any) -> None:
    async def body() -> None:
        listener = await listening(Recorder())
        try:
            with caplog.at_level(logging.ERROR, logger="kolk.http"):
                answer = await exchange(listener.address, get("/boom"))
            assert status_of(answer) == 500
            line = body_of(answer).decode()
            assert line.startswith("internal error: RuntimeError (ref ") and line.count("\n") == 1
            assert "the handler broke" not in line  # the details stay in the log
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1 and errors[0].exc_info is not None
            ref = line.split("(ref ")[1].split(";")[0]
            assert ref in errors[0].getMessage()
            bad = await exchange(listener.address, get("/bad-header"))  # a header that would split the answer
            assert status_of(bad) == 500 and b"Injected" not in bad
            assert status_of(await exchange(listener.address, get("/echo"))) == 200
        finally:
            await listener.close()
    run(body)


def test_a_handler_slower_than_its_limit_is_503() -> None:
    async def body() -> None:
        listener = await listening(Recorder(), HttpLimits(handler_timeout_s=0.2))
        try:
            answer = await exchange(listener.address, get("/slow"))
            assert status_of(answer) == 503 and b"took more than 0.2 s" in answer
        finally:
            await listener.close()
    run(body)


def test_a_slow_client_is_cut_at_the_head_read_timeout() -> None:
    async def body() -> None:
        listener = await listening(Recorder(), HttpLimits(head_read_timeout_s=0.3))
        try:
            host, port = listener.address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            loop = asyncio.get_running_loop()
            started = loop.time()
            writer.write(b"GET /echo HTTP/1.1\r\nHost: te")  # and then nothing more
            async with asyncio.timeout(DEADLINE_S):
                answer = await reader.read()
            waited = loop.time() - started
            writer.close()
            assert status_of(answer) == 408 and b"no complete request head within 0.3 s" in answer
            assert 0.25 <= waited < 5.0
            async with asyncio.timeout(DEADLINE_S):  # the listener lets the connection go too
                while listener.connections:
                    await asyncio.sleep(0.01)  # polling a condition with a deadline
        finally:
            await listener.close()
    run(body)


def test_connections_beyond_the_cap_are_503_and_the_cap_frees_up() -> None:
    async def body() -> None:
        listener = await listening(Recorder(), HttpLimits(connections_max=2))
        held = []
        try:
            host, port = listener.address.rsplit(":", 1)
            for _ in range(2):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(b"GET /echo HTTP/1.1\r\n")  # an unfinished head holds the connection
                held.append((reader, writer))
            async with asyncio.timeout(DEADLINE_S):
                while listener.connections < 2:
                    await asyncio.sleep(0.01)  # polling a condition with a deadline
            answer = await exchange(listener.address, get("/echo"))
            assert status_of(answer) == 503
            assert b"serves at most 2 HTTP connections at once" in answer
            for reader, writer in held:  # finishing the held requests gives their places back
                writer.write(b"\r\n")
                async with asyncio.timeout(DEADLINE_S):
                    assert status_of(await reader.read()) == 200
                writer.close()
            held.clear()
            assert status_of(await exchange(listener.address, get("/echo"))) == 200
        finally:
            for _, writer in held:
                writer.close()
            await listener.close()
    run(body)


# ---------------------------------------------------------------- TLS

@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> dict[str, dict[str, str]]:
    from kolk.security.certs import dev_pki

    root = tmp_path_factory.mktemp("pki")
    ours = dev_pki(str(root / "ours"), nodes=["node"], clients=["alice"])
    other = dev_pki(str(root / "other"), nodes=[], clients=["mallory"], ca_name="Another CA")
    return {**ours, "mallory": other["mallory"]}


def client_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    return TlsConfig(ca, cert, key).client_context()


def test_tls_needs_a_client_certificate_of_the_cluster_ca(pki: dict[str, dict[str, str]], caplog: Any) -> None:
    from kolk.security.certs import identity_of

    node, alice, mallory = pki["node"], pki["alice"], pki["mallory"]

    async def body() -> None:
        handler = Recorder()
        listener = await listening(handler, tls=TlsConfig(node["ca"], node["cert"], node["key"]))
        try:
            with caplog.at_level(logging.WARNING, logger="kolk.http"):
                # No client certificate: refused at the handshake.
                with pytest.raises((ssl.SSLError, ConnectionResetError)):
                    await exchange(listener.address, get("/echo"), client_context(node["ca"]))
                # A certificate of another CA: refused at the handshake.
                with pytest.raises((ssl.SSLError, ConnectionResetError)):
                    await exchange(listener.address, get("/echo"),
                                   client_context(node["ca"], mallory["cert"], mallory["key"]))
            refusals = [r.getMessage() for r in caplog.records if "TLS handshake with" in r.getMessage()]
            assert len(refusals) == 2, refusals
            # Each names the listener and the client (the TLS layer alone knows neither).
            assert all("127.0.0.1:" in line and " HTTP: TLS handshake with " in line for line in refusals), refusals
            assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in refusals[0]
            assert "CERTIFICATE_VERIFY_FAILED" in refusals[1]
            # Plaintext against the TLS listener: no HTTP answer.
            assert b"HTTP/1.1" not in await exchange(listener.address, get("/echo"))
            assert handler.requests == []
            # A good certificate: served, with its identity.
            answer = await exchange(listener.address, get("/echo"),
                                    client_context(node["ca"], alice["cert"], alice["key"]))
            assert status_of(answer) == 200
            with open(alice["cert"], "rb") as f:
                expected = identity_of(f.read())
            assert handler.requests[0].identity == expected
            assert body_of(answer).endswith(expected.encode())
        finally:
            await listener.close()
    run(body)


# ---------------------------------------------------------------- /metrics and /health

def test_the_metrics_listener_serves_metrics_and_health() -> None:
    registry = CollectorRegistry()
    requests = Counter("kolk_test_requests", "test", registry=registry)
    requests.inc(3)
    registry.register(ProcessCollector("9.9.9"))
    healthy = [True, "ok"]

    async def body() -> None:
        listener = await start_metrics_listener("127.0.0.1:0", registry, None, lambda: (healthy[0], healthy[1]),
                                                "test")
        monitor = LoopLagMonitor(registry, interval_s=0.01)
        monitor.start()
        try:
            async with asyncio.timeout(DEADLINE_S):
                while monitor.histogram.collect()[0].samples[-3].value < 3:  # _count
                    await asyncio.sleep(0.01)  # polling a condition with a deadline
            answer = await exchange(listener.address, get("/metrics"))
            assert status_of(answer) == 200
            assert f"Content-Type: {CONTENT_TYPE_LATEST}\r\n".encode() in answer
            families = {f.name: f for f in text_string_to_metric_families(body_of(answer).decode())}
            assert families["kolk_test_requests"].samples[0].value == 3
            assert families["kolk_process_resident_memory_bytes"].samples[0].value > 10 << 20
            assert families["kolk_process_cpu_seconds"].samples[0].value > 0
            assert families["kolk_process_open_fds"].samples[0].value >= 3
            assert families["kolk_build_info"].samples[0].labels["version"] == "9.9.9"
            lag = {s.name: s.value for s in families["kolk_event_loop_lag_seconds"].samples}
            assert lag["kolk_event_loop_lag_seconds_count"] >= 3
            assert status_of(await exchange(listener.address, b"HEAD /metrics HTTP/1.1\r\n\r\n")) == 200
            health = await exchange(listener.address, get("/health"))
            assert status_of(health) == 200 and body_of(health) == b"ok\n"
            healthy[:] = [False, "SPU 3 is not registered with the SC yet"]
            health = await exchange(listener.address, get("/health"))
            assert status_of(health) == 503 and body_of(health) == b"SPU 3 is not registered with the SC yet\n"
            missing = await exchange(listener.address, get("/metricz"))
            assert status_of(missing) == 404 and b"this listener serves /metrics and /health" in missing
            assert status_of(await exchange(listener.address, b"PUT /metrics HTTP/1.1\r\n\r\n")) == 405
        finally:
            monitor.stop()
            await listener.close()
    run(body)
