"""Running a server process until SIGTERM or SIGINT: the part ``kolk sc`` and ``kolk spu`` share."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import sys
from typing import Any, Callable

from ..security.tls import TlsConfig

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


M_MMAP_THRESHOLD = -3  # glibc mallopt parameters (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 256 << 10
ARENAS_MAX = 2


def return_large_buffers_to_the_os() -> None:
    """Keep a server's memory from staying at its peak after bursts of large buffers.

    A server handles many buffers of up to 16 MiB (batches, answers). glibc raises its mmap
    threshold every time such a buffer is freed, so later ones come from the heap, whose
    freed pages it keeps: 5,000 abandoned 1 MiB fetches left an SPU at ~200 MB for good. A
    fixed threshold (which also turns the raising off) gives every buffer above it its own
    mapping, returned when freed; two arenas bound what worker threads keep. Not glibc: no-op.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        libc.mallopt(M_ARENA_MAX, ARENAS_MAX)
    except (OSError, AttributeError):
        pass


def serve_until_signalled(make_server: Callable[[], Any], log_level: str) -> int:
    """Build the server inside the event loop, start it, and stop it on SIGTERM or SIGINT.

    Plain asyncio: the transport is Kolk's own (core/protocol/), so the cycle collector stays
    on and nothing needs pycapnp's event loop.
    """
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format=LOG_FORMAT)
    return_large_buffers_to_the_os()

    async def main() -> None:
        server = make_server()
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(main())
    return 0


def add_tls_arguments(p: argparse.ArgumentParser, who: str) -> None:
    """--tls-ca/--tls-cert/--tls-key for a server process (its listener and its own connections)."""
    p.add_argument("--tls-ca", help=f"CA certificate (PEM): turns TLS on; {who} then accepts only clients with a "
                                    "certificate signed by it")
    p.add_argument("--tls-cert", help="this node's certificate (PEM), from 'kolk cert issue --kind node'")
    p.add_argument("--tls-key", help="this node's private key (PEM)")


def tls_from_args(args: argparse.Namespace, prog: str) -> TlsConfig | None:
    if not args.tls_ca:
        if args.tls_cert or args.tls_key:
            raise SystemExit(f"{prog}: --tls-cert and --tls-key need --tls-ca")
        return None
    if not args.tls_cert or not args.tls_key:
        raise SystemExit(f"{prog}: TLS needs --tls-cert and --tls-key as well as --tls-ca")
    for flag, path in (("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if not os.path.isfile(path):
            raise SystemExit(f"{prog}: {flag} {path}: no such file")
    return TlsConfig(args.tls_ca, args.tls_cert, args.tls_key)
