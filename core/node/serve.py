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

from ..observe.logs import LOG_FORMATS, setup_logging
from ..security.tls import TlsConfig
from ..security.tls_files import TlsFileError, check_tls_files

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


# What a server creates is its own: files 0600, directories 0700, whatever the caller's umask
# (issue 17: segments, _audit and the Raft journal with the policy source were 0644 in 0755
# directories). A umask, not a mode per call: RocksDB, pysyncobj and the logging module
# create files we do not open ourselves.
PRIVATE_UMASK = 0o077
DATA_DIR_MODE = 0o700

log = logging.getLogger("kolk.node")


def keep_files_private() -> None:
    """Make every file and directory this process creates from now on private to its user."""
    os.umask(PRIVATE_UMASK)


def tighten_data_dir(path: str) -> str | None:
    """An existing data directory open to group or others becomes 0700; the line to log when
    it was changed, else None. A missing one is left for the server to create (0700 under
    :data:`PRIVATE_UMASK`), after it knows it can serve: a process that cannot listen leaves
    nothing behind. Files already inside are not rewritten: 0700 on the directory keeps other
    users out of everything under it."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        return None
    if not mode & 0o077:
        return None
    os.chmod(path, DATA_DIR_MODE)
    return f"data directory {path} was {mode:04o}, open to other users; now {DATA_DIR_MODE:04o}"


def serve_until_signalled(make_server: Callable[[], Any], log_level: str, data_dir: str | None = None,
                          node: str = "-", log_format: str = "text") -> int:
    """Build the server inside the event loop, start it, and stop it on SIGTERM or SIGINT.

    A server with a ``drain()`` (the SPU: controlled shutdown) runs it first, until it returns
    or a second SIGTERM or SIGINT arrives.

    Plain asyncio: the transport is Kolk's own (core/protocol/), so the cycle collector stays
    on and nothing needs pycapnp's event loop. Everything the server writes is private to its
    user (:func:`keep_files_private`), and ``data_dir``, when it exists, is tightened to 0700.
    Log lines go to stderr in ``log_format``, each naming ``node`` (core/observe/logs.py).
    """
    keep_files_private()
    try:
        setup_logging(node, log_level, log_format, sys.stderr)
    except ValueError as e:
        raise SystemExit(f"kolk {node.split('-')[0]}: {e}") from None
    if data_dir is not None:
        try:
            changed = tighten_data_dir(data_dir)
        except OSError as e:
            raise SystemExit(f"cannot make the data directory {data_dir} private (0700): "
                             f"{e.strerror or e}") from None
        if changed:
            log.warning("%s", changed)
    return_large_buffers_to_the_os()

    async def main() -> None:
        server = make_server()
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        drain = getattr(server, "drain", None)  # an SPU hands its leaderships over first (core/spu/shutdown.py)
        if drain is not None:
            stop.clear()  # a second signal stops at once
            handing_over = asyncio.ensure_future(drain())
            again = asyncio.ensure_future(stop.wait())
            await asyncio.wait({handing_over, again}, return_when=asyncio.FIRST_COMPLETED)
            for task in (handing_over, again):
                task.cancel()
            if again.done() and not again.cancelled():
                log.warning("a second signal: stopping at once")
            elif handing_over.done() and not handing_over.cancelled() and handing_over.exception() is not None:
                log.error("the hand-over before stopping failed; stopping anyway",
                          exc_info=handing_over.exception())
        await server.stop()

    asyncio.run(main())
    return 0


def add_tls_arguments(p: argparse.ArgumentParser, who: str) -> None:
    """--tls-ca/--tls-cert/--tls-key for a server process (its listener and its own connections)."""
    p.add_argument("--tls-ca", help=f"CA certificate (PEM): turns TLS on; {who} then accepts only clients with a "
                                    "certificate signed by it")
    p.add_argument("--tls-cert", help="this node's certificate (PEM), from 'kolk cert issue --kind node'")
    p.add_argument("--tls-key", help="this node's private key (PEM)")


def add_log_arguments(p: argparse.ArgumentParser) -> None:
    """--log-level and --log-format for a server process (docs/operations.md, Logs)."""
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                   help="text (default) or json: one JSON object per line (ts, level, logger, node, msg, ...)")


def tls_from_args(args: argparse.Namespace, prog: str) -> TlsConfig | None:
    if not args.tls_ca:
        if args.tls_cert or args.tls_key:
            raise SystemExit(f"{prog}: --tls-cert and --tls-key need --tls-ca")
        return None
    if not args.tls_cert or not args.tls_key:
        raise SystemExit(f"{prog}: TLS needs --tls-cert and --tls-key as well as --tls-ca")
    try:
        check_tls_files(args.tls_ca, args.tls_cert, args.tls_key)
    except TlsFileError as e:
        raise SystemExit(f"{prog}: {e}") from None
    return TlsConfig(args.tls_ca, args.tls_cert, args.tls_key)
