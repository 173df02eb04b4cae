"""The TLS listener with a cap on handshakes (core/protocol/accept.py), in-process with real
TLS: over the cap a connection is closed at once and logged once; a slot frees when a silent
connection's handshake times out or its client closes it; bad settings are refused. The flood
against a real SPU is tests/test_channel_handshake_flood.py."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dataplane_cluster import run_async, wait_until  # noqa: E402
from kolk.protocol.accept import Listener, listen  # noqa: E402
from kolk.security.certs import dev_pki  # noqa: E402
from kolk.security.tls import TlsConfig  # noqa: E402


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TlsConfig]:
    p = dev_pki(str(tmp_path_factory.mktemp("pki")), nodes=["node"], clients=["alice"])
    return {name: TlsConfig(p[name]["ca"], p[name]["cert"], p[name]["key"]) for name in ("node", "alice")}


async def _listener(pki: dict[str, TlsConfig], handshakes_max: int, timeout_s: float) -> Listener:
    return await listen("127.0.0.1", 0, Echo, pki["node"].server_context(), "test listener", handshakes_max, timeout_s)


async def _silent(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _closed_by_server(reader: asyncio.StreamReader, within_s: float) -> bool:
    try:
        async with asyncio.timeout(within_s):
            return await reader.read(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


async def _echoes(pki: dict[str, TlsConfig], port: int) -> bool:
    ctx = pki["alice"].client_context()
    ctx.check_hostname = False
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, ssl_handshake_timeout=2)
    except (OSError, ssl.SSLError):
        return False
    try:
        writer.write(b"ping")
        return await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"
    except (OSError, asyncio.IncompleteReadError, TimeoutError):
        return False
    finally:
        writer.close()


def test_over_the_cap_a_connection_is_closed_at_once_and_logged_once(pki: dict[str, TlsConfig],
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        listener = await _listener(pki, 2, 30)
        port = listener.sockets[0].getsockname()[1]
        held = [await _silent(port) for _ in range(2)]
        await wait_until(lambda: listener.handshaking == 2, 5, "two handshakes to be counted")
        over = [await _silent(port) for _ in range(3)]
        try:
            for reader, _ in over:
                assert await _closed_by_server(reader, 5), "a connection over the cap was not closed at once"
            assert listener.handshaking == 2
            assert not await _closed_by_server(held[0][0], 0.2), "a connection under the cap was closed"
        finally:
            for _, writer in held + over:
                writer.close()
            listener.close()
            await listener.wait_closed()
    with caplog.at_level(logging.WARNING, logger="kolk.accept"):
        run_async(body)
    lines = [r.getMessage() for r in caplog.records if "in their TLS handshake already" in r.getMessage()]
    assert lines and lines[0] == ("test listener: 2 connections are in their TLS handshake already (the limit): "
                                  "a connection closed before its TLS handshake"), lines
    assert all(getattr(r, "repeat_key", None) == ("over the handshake cap", "test listener")
               for r in caplog.records if "in their TLS handshake already" in r.getMessage())


def test_a_silent_connection_frees_its_slot_at_the_handshake_timeout(pki: dict[str, TlsConfig]) -> None:
    async def body() -> None:
        listener = await _listener(pki, 1, 0.5)
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await _silent(port)
        try:
            await wait_until(lambda: listener.handshaking == 1, 5, "the silent connection to be counted")
            assert not await _echoes(pki, port)  # the one slot is taken: refused at once
            assert await _closed_by_server(reader, 5), "the silent connection outlived its handshake timeout"
            assert listener.handshaking == 0
            assert await _echoes(pki, port)
        finally:
            writer.close()
            listener.close()
            await listener.wait_closed()
    run_async(body)


def test_a_silent_connection_closed_by_its_client_frees_its_slot_at_once(pki: dict[str, TlsConfig]) -> None:
    async def body() -> None:
        listener = await _listener(pki, 1, 30)
        port = listener.sockets[0].getsockname()[1]
        try:
            _, writer = await _silent(port)
            await wait_until(lambda: listener.handshaking == 1, 5, "the silent connection to be counted")
            writer.close()
            await wait_until(lambda: listener.handshaking == 0, 5, "the closed connection's slot to free")
            assert await _echoes(pki, port)
        finally:
            listener.close()
            await listener.wait_closed()
    run_async(body)


@pytest.mark.parametrize("handshakes_max,timeout_s", [(0, 10.0), (1, 0.0), (1, -1.0)])
def test_bad_settings_are_refused(pki: dict[str, TlsConfig], handshakes_max: int, timeout_s: float) -> None:
    async def body() -> None:
        with pytest.raises(ValueError, match="handshakes_max >= 1 and handshake_timeout_s > 0"):
            await _listener(pki, handshakes_max, timeout_s)
    run_async(body)
