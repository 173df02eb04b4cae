"""The TCP fault-injection proxy (jepsen/proxy.py) in front of a tiny threaded echo server on
loopback: forwarding, cut with reset and with blackhole, heal, dropped replies, delay, the
connection limit and stop()."""

from __future__ import annotations

import os
import socket
import socketserver
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jepsen.cluster import wait_for  # noqa: E402
from jepsen.proxy import FaultProxy  # noqa: E402

SHORT_S = 0.3  # how long "nothing arrives" is watched for


class EchoServer(socketserver.ThreadingTCPServer):
    """Echoes every byte back; counts the bytes it received."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.received = 0
        self.lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        try:
            while data := self.request.recv(65536):
                with self.server.lock:
                    self.server.received += len(data)
                self.request.sendall(data)
        except OSError:
            pass


@pytest.fixture
def echo():
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="echo-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(2)


@pytest.fixture
def proxy(echo):
    with FaultProxy(echo.address) as p:
        yield p


def connect(address: str) -> socket.socket:
    host, port = address.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=2)
    s.settimeout(2)
    return s


def roundtrip(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def assert_dropped(s: socket.socket) -> None:
    """The connection ends (EOF or reset) without any reply byte."""
    try:
        assert s.recv(65536) == b""
    except ConnectionError:
        pass


def assert_refused(address: str) -> None:
    """A new connection is accepted and then reset or closed without any byte; the reset may
    already arrive while connect() returns."""
    try:
        s = connect(address)
    except ConnectionError:
        return
    with s:
        assert_dropped(s)


def assert_silent(s: socket.socket) -> None:
    s.settimeout(SHORT_S)
    with pytest.raises(socket.timeout):
        s.recv(65536)
    s.settimeout(2)


def test_forwards_both_ways_and_counts(proxy, echo):
    assert proxy.address.startswith("127.0.0.1:")
    with connect(proxy.address) as a, connect(proxy.address) as b:
        assert roundtrip(a, b"hello") == b"hello"
        assert roundtrip(b, b"x" * 200_000) == b"x" * 200_000
    assert proxy.connections_total == 2
    assert echo.received == 200_005
    wait_for(lambda: proxy.bytes_forwarded == 2 * 200_005, 1, lambda: f"forwarded {proxy.bytes_forwarded}")
    wait_for(lambda: proxy.connections_active == 0, 1, "connections closed")


def test_half_close_is_forwarded(proxy):
    with connect(proxy.address) as s:
        s.sendall(b"last words")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        assert got == b"last words"


def test_cut_reset_breaks_existing_and_refuses_new_heal_restores(proxy, echo):
    old = connect(proxy.address)
    assert roundtrip(old, b"ping") == b"ping"
    proxy.cut("reset")
    assert_dropped(old)
    old.close()
    assert_refused(proxy.address)  # the kernel accepts; the proxy resets at once
    assert echo.received == 4
    proxy.heal()
    with connect(proxy.address) as s:
        assert roundtrip(s, b"again") == b"again"
    assert proxy.connections_refused == 1


def test_blackhole_holds_everything_heal_resets_old_and_accepts_new(proxy, echo):
    old = connect(proxy.address)
    assert roundtrip(old, b"ping") == b"ping"
    proxy.cut("blackhole")
    old.sendall(b"lost")
    assert_silent(old)
    new = connect(proxy.address)
    new.sendall(b"lost too")
    assert_silent(new)
    assert echo.received == 4  # nothing crossed the cut
    proxy.heal()
    assert_dropped(old)
    assert_dropped(new)
    old.close()
    new.close()
    with connect(proxy.address) as s:
        assert roundtrip(s, b"healed") == b"healed"
    assert echo.received == 4 + len(b"healed")


def test_blackhole_withholds_eof(proxy):
    with connect(proxy.address) as s:
        proxy.cut("blackhole")
        s.shutdown(socket.SHUT_WR)
        assert_silent(s)
    proxy.heal()


def test_dropped_reply_after_request_was_processed(proxy, echo):
    proxy.set_drop_replies(True)
    with connect(proxy.address) as s:
        s.sendall(b"write-1")
        assert_dropped(s)
    assert echo.received == len(b"write-1")  # the server did process the request
    proxy.set_drop_replies(False)
    with connect(proxy.address) as s:
        assert roundtrip(s, b"write-2") == b"write-2"


def test_delay_applies_to_both_directions(proxy):
    with connect(proxy.address) as s:
        assert roundtrip(s, b"warm") == b"warm"
        proxy.set_delay(0.2)
        start = time.monotonic()
        assert roundtrip(s, b"slow") == b"slow"
        assert time.monotonic() - start >= 0.4
        proxy.set_delay(0)
        start = time.monotonic()
        assert roundtrip(s, b"fast") == b"fast"
        assert time.monotonic() - start < 0.3
    for bad in (-1, 10.5):
        with pytest.raises(ValueError):
            proxy.set_delay(bad)


def test_connection_limit(echo):
    with FaultProxy(echo.address, max_connections=2) as p:
        a, b = connect(p.address), connect(p.address)
        assert roundtrip(a, b"a") == b"a"
        assert roundtrip(b, b"b") == b"b"
        assert_refused(p.address)
        assert p.connections_refused == 1
        a.close()
        wait_for(lambda: p.connections_active == 1, 1, lambda: f"{p.connections_active} active")
        with connect(p.address) as d:
            assert roundtrip(d, b"d") == b"d"
        b.close()


def test_unreachable_target_resets_client():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"  # bound, never listening: connection refused
        with FaultProxy(dead) as p:
            assert_refused(p.address)


def test_stop_is_idempotent_and_joins_the_thread(echo):
    p = FaultProxy(echo.address).start()
    s = connect(p.address)
    assert roundtrip(s, b"x") == b"x"
    thread = p._thread
    p.stop()
    p.stop()
    assert not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("FaultProxy")]
    assert_dropped(s)
    s.close()
    with pytest.raises(ConnectionRefusedError):
        connect(p.address)
    with pytest.raises(RuntimeError):
        p.start()
    p.cut("reset")  # control calls after stop are harmless
    p.heal()


def test_bad_arguments(echo):
    for bad in ("nohost", "host:", ":123", "host:port"):
        with pytest.raises(ValueError):
            FaultProxy(bad)
    with pytest.raises(RuntimeError):
        FaultProxy(echo.address).address
    with FaultProxy(echo.address) as p, pytest.raises(ValueError):
        p.cut("partial")
