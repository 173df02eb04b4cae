"""A small HTTP/1.1 listener for what a node shows over HTTP: /metrics, /health and the SC's console.

It runs on the node's own event loop, answers one request per connection (``Connection:
close``) and has a limit on everything a client controls (:class:`HttpLimits`): connections at
once, the bytes and lines of a request head, the time to send it, the time to take the answer,
and the time a handler may take. Only GET and HEAD exist here; a request with a body is refused.

With ``tls`` (the node's own :class:`~kolk.security.tls.TlsConfig`) the listener speaks TLS and
requires a client certificate signed by the cluster CA, exactly as the node's Cap'n Proto
listener does (the same ``server_context``): a client without one, or with one of another CA,
is refused at the handshake, so a handler never sees an unauthenticated request. The handler
gets the certificate's identity in :attr:`HttpRequest.identity`.

:func:`parse_head` is pure (bytes in, a request or the error to answer out); the rest is the
asyncio edge around it.
"""

from __future__ import annotations

import asyncio
import http
import logging
import os
import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import parse_qs, unquote

from ..protocol.accept import ACCEPT_BACKLOG, accept_connections
from ..protocol.channel import TLS_HANDSHAKE_TIMEOUT_S
from ..security.tls import TlsConfig, explain_ssl_error, peer_of
from ..transport import parse_address

log = logging.getLogger("kolk.http")

METHODS = ("GET", "HEAD")
LINGER_BYTES_MAX = 1 << 20  # dropped while lingering (HttpLimits.linger_s) before closing anyway
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token (method, header name)
_VERSION = re.compile(rb"HTTP/1\.[01]")
TLS_HANDSHAKE_RECORD = b"\x16"  # the first byte a TLS client sends (a handshake record: ClientHello)


@dataclass(frozen=True)
class HttpLimits:
    connections_max: int = 64  # connections served at once; one more is answered 503 and closed
    head_bytes_max: int = 8 << 10  # request line and headers; more is answered 431
    head_lines_max: int = 100  # header lines; more is answered 431
    query_fields_max: int = 100  # name=value pairs in the query string; more is answered 400
    head_read_timeout_s: float = 10.0  # to send the whole head (slow clients are answered 408)
    handler_timeout_s: float = 30.0  # for the handler's answer; longer is answered 503
    write_timeout_s: float = 10.0  # for the client to take the answer; then the connection is cut
    # After answering a request it did not read to its end (503 over the cap, 408, 431), the
    # listener reads and drops what the client still sends, for at most this long, before it
    # closes: closing with unread bytes would reset the connection and lose the answer.
    linger_s: float = 1.0
    tls_handshake_timeout_s: float = TLS_HANDSHAKE_TIMEOUT_S

    def __post_init__(self) -> None:
        for name in ("connections_max", "head_bytes_max", "head_lines_max", "query_fields_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"HttpLimits.{name} must be at least 1, not {getattr(self, name)}")
        for name in ("head_read_timeout_s", "handler_timeout_s", "write_timeout_s", "linger_s",
                     "tls_handshake_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HttpLimits.{name} must be more than 0, not {getattr(self, name)}")


@dataclass(frozen=True)
class HttpRequest:
    method: str  # "GET" or "HEAD"
    path: str  # decoded path without the query, e.g. "/topics/orders"
    query: dict[str, list[str]] = field(default_factory=dict)  # parsed query string
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    peer: str = ""  # "host:port" of the client
    identity: str | None = None  # the client certificate's identity with TLS; None without TLS


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def text(status: int, line: str, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    """A plain-text answer of one line (the shape of every error this module answers)."""
    return HttpResponse(status, (line.replace("\n", " ").replace("\r", " ") + "\n").encode(), headers=headers)


def parse_head(head: bytes, limits: HttpLimits) -> HttpRequest | HttpResponse:
    """The request in ``head`` (the bytes before the blank line, without it), or the answer
    that refuses it: 400 (malformed), 405 (not GET/HEAD), 431 (too many lines), 505 (not
    HTTP/1.0 or 1.1). ``peer`` and ``identity`` are left for the caller to fill in."""
    lines = head.split(b"\r\n")
    if len(lines) - 1 > limits.head_lines_max:
        return text(431, f"the request has more than {limits.head_lines_max} header lines")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1]:
        return text(400, "malformed request line: expected METHOD TARGET HTTP/1.1")
    method_b, target_b, version = parts
    if not _VERSION.fullmatch(version):
        return text(505, f"only HTTP/1.0 and HTTP/1.1 are served, not {version[:16].decode('latin-1')!r}")
    method = method_b.decode("ascii")
    if method not in METHODS:
        return text(405, f"method {method[:16]} is not allowed here: only GET and HEAD",
                    headers=(("Allow", ", ".join(METHODS)),))
    try:
        target = target_b.decode("ascii")
    except UnicodeDecodeError:
        return text(400, "the request target must be ASCII (percent-encode other characters)")
    if not target.startswith("/") or any(c in target for c in "\x00\t #") or not target.isprintable():
        return text(400, "the request target must be a path starting with '/', such as /metrics")
    raw_path, _, raw_query = target.partition("?")
    try:
        path = unquote(raw_path, errors="strict")
    except UnicodeDecodeError:
        return text(400, "the request path is not UTF-8 once percent-decoded")
    if "\x00" in path:
        return text(400, "the request path contains a NUL character")
    try:
        query = parse_qs(raw_query, keep_blank_values=True, strict_parsing=False, errors="strict",
                         max_num_fields=limits.query_fields_max)
    except UnicodeDecodeError:
        return text(400, "the query string is not UTF-8 once percent-decoded")
    except ValueError:
        return text(400, f"the query string has more than {limits.query_fields_max} fields")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            return text(400, "malformed header line: expected Name: value (no folding, no spaces before ':')")
        key = name.decode("ascii").lower()
        v = value.strip(b" \t").decode("latin-1")
        if any(c in v for c in "\x00\r\n"):
            return text(400, f"the value of header {key} contains a control character")
        headers[key] = f"{headers[key]}, {v}" if key in headers else v
    if "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("0", ""):
        return text(400, "GET and HEAD requests here carry no body (no Content-Length or Transfer-Encoding)")
    return HttpRequest(method, path, query, headers)


def response_head(response: HttpResponse) -> bytes:
    """The status line and headers of ``response``; ValueError if a header holds a line break."""
    try:
        reason = http.HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Status"
    lines = [f"HTTP/1.1 {response.status} {reason}",
             f"Content-Type: {response.content_type}",
             f"Content-Length: {len(response.body)}",
             "Connection: close"]
    lines += [f"{name}: {value}" for name, value in response.headers]
    for line in lines:
        if "\r" in line or "\n" in line:  # a programmer error: never let a header split the answer
            raise ValueError(f"an HTTP response header contains a line break: {line[:80]!r}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _peer_text(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


class HttpListener:
    """A running listener: :attr:`address` is the ``host:port`` actually bound."""

    def __init__(self, sock: socket.socket, handler: Handler, context: ssl.SSLContext | None, name: str,
                 limits: HttpLimits) -> None:
        self._sock = sock
        self._handler = handler
        self._context = context
        self._tls = context is not None
        self.name = name
        self.limits = limits
        self._connections: set[asyncio.StreamWriter] = set()
        self._handshaking = 0  # TLS connections accepted and still in their handshake
        self._tasks: set[asyncio.Task[None]] = set()
        host, port = sock.getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    @property
    def connections(self) -> int:
        """Connections open now (with TLS, those still in their handshake too)."""
        return len(self._connections) + self._handshaking

    async def close(self) -> None:
        """Stop listening and cut the connections still open."""
        self._accepting.cancel()
        await asyncio.gather(self._accepting, return_exceptions=True)
        self._sock.close()
        for writer in list(self._connections):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self) -> None:
        """Accept connections. With TLS the cap is applied here, BEFORE the handshake: asyncio
        gives each TLS connection a 256 KiB buffer and keeps an idle one for the whole handshake
        timeout, so 3,000 silent connections held ~440 MiB and 1,400 files of a node when the cap
        was applied after it. Over the cap a TLS connection is closed at once (no answer can be
        sent before a handshake); a plain one is answered 503 in :meth:`_serve`. The accept loop
        is the one the Cap'n Proto listener uses (core/protocol/accept.py)."""
        await accept_connections(self._sock, f"{self.name} HTTP", self._refusal, self._start)

    def _refusal(self) -> str | None:
        if self._tls and self.connections >= self.limits.connections_max:
            return f"over {self.limits.connections_max} connections"
        return None

    def _start(self, conn: socket.socket) -> None:
        if self._tls:  # counted now: a burst of accepts runs before any of their tasks does
            self._handshaking += 1
        task = asyncio.get_running_loop().create_task(self._connection(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connection(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=self.limits.head_bytes_max + 4, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        kwargs: dict[str, object] = {}
        if self._context is not None:  # counted in _handshaking by _accept
            kwargs = {"ssl": self._context, "ssl_handshake_timeout": self.limits.tls_handshake_timeout_s}
        peer = _peer_text(conn)  # before asyncio takes the socket (and closes it on a failed handshake)
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn, **kwargs)  # type: ignore[arg-type]
        except ssl.SSLError as e:  # a refused certificate, plaintext on a TLS port
            # One line naming the listener, the client and why; the same again from the same
            # host (a scraper with a bad certificate) once per 30 s (core/observe/log_limits.py).
            why = explain_ssl_error(e)
            log.warning("%s HTTP: TLS handshake with %s refused: %s", self.name, peer, why,
                        extra={"repeat_key": ("http tls refused", self.name, peer.rsplit(":", 1)[0], why)})
            conn.close()
            return
        except (OSError, TimeoutError) as e:  # a silent client, a reset
            log.debug("%s HTTP: connection from %s not established: %s", self.name, peer, e)
            conn.close()
            return
        except asyncio.CancelledError:  # the listener is closing
            conn.close()
            raise
        finally:
            if self._context is not None:
                self._handshaking -= 1
        await self._serve(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else ""
        if len(self._connections) >= self.limits.connections_max:
            try:
                await self._answer(writer, "GET", text(503, f"the {self.name} serves at most "
                                                        f"{self.limits.connections_max} HTTP connections at once"), peer)
                await self._linger(reader, writer)
            except OSError:
                pass
            finally:
                writer.close()
            return
        self._connections.add(writer)
        try:
            request = await self._read_request(reader, peer)
            if isinstance(request, HttpResponse):
                await self._answer(writer, "GET", request, peer)
                if request.status in (408, 431):  # the head was not read to its end
                    await self._linger(reader, writer)
                return
            identity = peer_of(writer.transport).identity if self._tls else None
            request = HttpRequest(request.method, request.path, request.query, request.headers, peer, identity)
            await self._answer(writer, request.method, await self._call(request), peer)
        except (OSError, asyncio.IncompleteReadError):
            pass  # the client went away (or its TLS broke): nothing to answer
        finally:
            self._connections.discard(writer)
            writer.close()

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read and drop what the client still sends, until it closes or ``linger_s`` passes.
        Over plain TCP the listener's side is shut first, so a client reading to the end of the
        answer closes at once (TLS cannot half-close: there the client's own close ends it)."""
        if writer.can_write_eof():
            writer.write_eof()
        dropped = 0
        try:
            async with asyncio.timeout(self.limits.linger_s):
                while dropped < LINGER_BYTES_MAX and (chunk := await reader.read(64 << 10)):
                    dropped += len(chunk)
        except TimeoutError:
            pass

    async def _read_request(self, reader: asyncio.StreamReader, peer: str) -> HttpRequest | HttpResponse:
        limit = self.limits.head_bytes_max
        data = bytearray()
        try:
            async with asyncio.timeout(self.limits.head_read_timeout_s):
                while b"\r\n\r\n" not in data:
                    if len(data) > limit:
                        break
                    chunk = await reader.read(limit + 4 - len(data))
                    if not chunk:
                        raise asyncio.IncompleteReadError(bytes(data), None)
                    data += chunk
                    if data[:1] == TLS_HANDSHAKE_RECORD and not self._tls:  # answered at once, not after 10 s
                        return text(400, "this port speaks plain HTTP (http://), not TLS: a TLS handshake was sent")
                    if b"\n\n" in data.split(b"\r\n\r\n", 1)[0]:
                        return text(400, "the request head's lines must end with CR LF, not a bare LF")
        except TimeoutError:
            log.info("%s HTTP: %s sent no complete request head within %g s: cut", self.name, peer,
                     self.limits.head_read_timeout_s)
            return text(408, f"no complete request head within {self.limits.head_read_timeout_s:g} s")
        end = data.find(b"\r\n\r\n")
        if end < 0 or end + 4 > limit:
            return text(431, f"the request head is larger than {limit} bytes")
        return parse_head(bytes(data[:end]), self.limits)

    async def _call(self, request: HttpRequest) -> HttpResponse:
        try:
            async with asyncio.timeout(self.limits.handler_timeout_s):
                response = await self._handler(request)
            if not isinstance(response, HttpResponse):
                raise TypeError(f"the handler returned {type(response).__name__}, not an HttpResponse")
            response_head(response)  # a header with a line break is the handler's fault: 500 below
            return response
        except TimeoutError:
            log.warning("%s HTTP: %s %s took more than %g s: answered 503", self.name, request.method,
                        request.path[:200], self.limits.handler_timeout_s)
            return text(503, f"{request.path[:200]} took more than {self.limits.handler_timeout_s:g} s to answer")
        except Exception as e:  # noqa: BLE001 - one request fails, the listener keeps serving
            ref = os.urandom(4).hex()
            log.error("%s HTTP: %s %s failed [ref %s]", self.name, request.method, request.path[:200], ref,
                      exc_info=e)
            return text(500, f"internal error: {type(e).__name__} (ref {ref}; the {self.name}'s log has the details)")

    async def _answer(self, writer: asyncio.StreamWriter, method: str, response: HttpResponse, peer: str) -> None:
        log.debug("%s HTTP: %s %s -> %d", self.name, peer, method, response.status)
        writer.write(response_head(response))
        if method != "HEAD" and response.body:
            writer.write(response.body)  # not joined to the head: a large body is not copied
        try:
            async with asyncio.timeout(self.limits.write_timeout_s):
                await writer.drain()
        except TimeoutError:
            log.info("%s HTTP: %s did not take the answer within %g s: cut", self.name, peer,
                     self.limits.write_timeout_s)
            writer.transport.abort()


def parse_listen_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of a listen address ``host:port``; port 0 means any free port.
    kolk.transport.InvalidAddressError (a ValueError, one line) when it is not one."""
    if isinstance(address, str) and address.endswith(":0"):  # check the host as parse_address does
        return parse_address(address[:-1] + "1")[0], 0
    return parse_address(address)


async def serve_http(address: str, handler: Handler, *, tls: TlsConfig | None, name: str,
                     limits: HttpLimits = HttpLimits()) -> HttpListener:
    """Listen on ``address`` (``host:port``, port 0 for any free one) and answer each request
    with ``handler``. ``name`` (e.g. "sc-1 metrics") is what the logs and errors call it."""
    host, port = parse_listen_address(address)
    context = tls.server_context(log_refusals=False) if tls is not None else None
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    sock = socket.create_server(sockaddr[:2], family=family, backlog=ACCEPT_BACKLOG)
    sock.setblocking(False)
    listener = HttpListener(sock, handler, context, name, limits)
    log.info("%s: serving HTTP%s on %s", name, "S (client certificates required)" if context else "",
             listener.address)
    return listener
