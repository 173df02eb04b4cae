"""Running a server process until SIGTERM or SIGINT: the part ``kolk sc`` and ``kolk spu`` share."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any, Callable

import capnp

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def serve_until_signalled(make_server: Callable[[], Any], log_level: str) -> int:
    """Build the server inside the event loop, start it, and stop it on SIGTERM or SIGINT."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format=LOG_FORMAT)

    async def main() -> None:
        server = make_server()
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(capnp.run(main()))
    return 0
