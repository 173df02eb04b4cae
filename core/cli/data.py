"""``kolk produce`` and ``kolk consume``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import datetime
import signal
import stat
import sys
import time
from typing import Any, AsyncIterator, BinaryIO

from ..client.admin import run
from ..client.client import AsyncClient
from ..client.consumer import Offset
from ..protocol.errors import KolkError, NotFoundError
from . import args as A

COMMANDS = ("produce", "consume")
PROGRESS_INTERVAL_S = 0.2


def add_commands(sub: Any) -> None:
    from .admin import _sc_option
    from .smartmodule import add_chain_options

    p = sub.add_parser("produce", help="produce records: one per line from stdin or --file")
    p.add_argument("topic")
    p.add_argument("--file", help="read lines from this file (shows a progress bar when stderr is a terminal)")
    p.add_argument("--key-separator", help="split each line into key and value at the first SEP")
    p.add_argument("--partition", type=A.PARTITION, help="send every record to this partition")
    p.add_argument("--acks", choices=["none", "leader", "all"], default="all")
    p.add_argument("--compression", choices=["none", "gzip", "zstd"], default="none")
    p.add_argument("--linger-ms", type=A.LINGER_MS, default=5.0,
                   help=f"wait this long to fill a batch (default 5; at most {A.LINGER_MS_MAX:g})")
    p.add_argument("--tombstones", action="store_true",
                   help="each line is a key; its record has no value (a tombstone: in a compacted topic it deletes "
                        "the key)")
    p.add_argument("--skip-bad-lines", action="store_true",
                   help="skip lines without the key separator quietly (default: name each on stderr and exit 1 "
                        "after sending the good ones)")
    add_chain_options(p)
    _sc_option(p)

    c = sub.add_parser("consume", help="consume records and print them")
    c.add_argument("topic")
    c.add_argument("-B", "--from-beginning", action="store_true", help="start at the beginning (default: the end)")
    c.add_argument("--offset", type=A.OFFSET,
                   help="start at this absolute offset, from the log start to the log end (at the end: wait for "
                        "new records); outside that range it is refused with the range the partition holds")
    c.add_argument("--tail", type=A.OFFSET, metavar="N", help="start N records before the end")
    c.add_argument("--from-timestamp", metavar="TIME",
                   help="start at the first record at or after TIME: milliseconds since the epoch, or an ISO 8601 "
                        "date and time (e.g. 2026-12-05T10:00:00Z)")
    c.add_argument("--partition", type=A.PARTITION, help="only this partition (default: all)")
    c.add_argument("-d", "--disconnect", action="store_true", help="exit once the end is reached")
    c.add_argument("--output", choices=["text", "json", "raw"], default="text")
    c.add_argument("--max", type=A.COUNT, help="exit after this many records")
    c.add_argument("--group", metavar="GROUP",
                   help="consume as a member of this consumer group: the group assigns the partitions, positions "
                        "are committed every 5 s and on exit, and a rerun resumes after the last commit (-B: where a "
                        "partition without a commit starts; -d: exit once every assigned partition is read to its "
                        "end as of its assignment)")
    add_chain_options(c)
    _sc_option(c)


async def _lines(f: BinaryIO, interactive: bool) -> AsyncIterator[bytes]:
    """Lines without their end. From a terminal or a pipe each line is read on a worker
    thread, so the event loop sends it while the next is typed; a file is read in place."""
    if not interactive:
        for line in f:
            yield line.rstrip(b"\r\n")
        return
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, f.readline):
        yield line.rstrip(b"\r\n")


def _timestamp_ms(text: str) -> int:
    """Milliseconds since the epoch from TIME (an integer, or ISO 8601; no zone means UTC)."""
    if text.lstrip("-").isdigit():
        ms = int(text)
        if not A.INT64_MIN <= ms <= A.INT64_MAX:
            raise KolkError(f"--from-timestamp {text[:A.ARGUMENT_CHARS_SHOWN]} is out of range: milliseconds "
                            f"from {A.INT64_MIN} to {A.INT64_MAX}")
        return ms
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise KolkError(f"--from-timestamp {text!r} is neither milliseconds since the epoch nor an ISO 8601 "
                        "date and time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return int(when.timestamp() * 1000)


def client_tls(args: argparse.Namespace) -> Any:
    from .admin import client_tls as tls

    return tls(args)


async def _produce(args: argparse.Namespace, sc: str) -> int:
    client = AsyncClient(sc, tls=client_tls(args))
    chain = args.smartmodules or []
    # A produce-side chain changes the batches an idempotent producer's sequence numbers count.
    producer = client.producer(args.topic, acks=args.acks, compression=args.compression, linger_ms=args.linger_ms,
                               smartmodules=chain, idempotent=False if chain else None)
    # The topic first, before any input is read: `kolk produce nosuch </dev/null` is the same
    # error as with data, not "produced 0 record(s)".
    if await client.admin.get_object("topic", args.topic) is None:
        raise NotFoundError(f"topic {args.topic} does not exist")
    sep = args.key_separator.encode() if args.key_separator else None
    # The progress bar is for a person: drawn only when stderr is a terminal.
    total = os.path.getsize(args.file) if args.file and sys.stderr.isatty() else 0
    source = open(args.file, "rb") if args.file else sys.stdin.buffer
    sent = 0
    bad = 0
    number = 0
    read_bytes = 0
    last_draw = 0.0
    futures = []
    interactive = not args.file and not _regular_file(source)
    try:
        async for line in _lines(source, interactive):
            number += 1
            read_bytes += len(line) + 1
            if not line:
                continue
            key, value = None, line
            if args.tombstones:
                key, value = line, None
            elif sep is not None:
                if sep not in line:
                    bad += 1
                    if not args.skip_bad_lines:
                        print(f"kolk produce: line {number} has no key separator {args.key_separator!r}; not sent",
                              file=sys.stderr)
                    continue
                key, value = line.split(sep, 1)
            futures.append(await producer.send(value, key, partition=args.partition))
            sent += 1
            if len(futures) >= 10_000:
                await futures[-1]
                futures.clear()
            if total and time.monotonic() - last_draw > PROGRESS_INTERVAL_S:
                last_draw = time.monotonic()
                _bar(read_bytes, total, sent)
        await producer.flush()
        for fut in futures[-1:]:
            await fut
    finally:
        if args.file:
            source.close()
    if total:
        _bar(total, total, sent)
        print(file=sys.stderr)
    skipped = f"; {bad} bad line(s) skipped" if bad else ""
    if chain:  # the chain decides what is stored: a filter may have kept fewer, an array_map more
        names = " -> ".join(stage[0] if isinstance(stage, (tuple, list)) else str(stage) for stage in chain)
        print(f"sent {sent} record(s) to {args.topic} through {names}, which decided what was stored{skipped}",
              file=sys.stderr)
    else:
        print(f"produced {sent} record(s) to {args.topic}{skipped}", file=sys.stderr)
    return 1 if bad and not args.skip_bad_lines else 0


def _regular_file(f: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(f.fileno()).st_mode)
    except (OSError, ValueError):
        return False


def _bar(done: int, total: int, records: int) -> None:
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {100 * done // max(total, 1):3d}% "
                     f"{records} records")
    sys.stderr.flush()


async def _consume(args: argparse.Namespace, sc: str) -> int:
    client = AsyncClient(sc, tls=client_tls(args))
    if args.group is not None:
        return await _consume_group(args, client)
    if args.offset is not None:
        start = Offset.absolute(args.offset)
    elif args.from_timestamp is not None:
        start = Offset.timestamp(_timestamp_ms(args.from_timestamp))
    elif args.tail is not None:
        start = Offset.from_end(args.tail)
    elif args.from_beginning:
        start = Offset.beginning()
    else:
        start = Offset.end()
    consumer = client.consumer(args.topic, partition=args.partition, start=start, stop_at_end=args.disconnect,
                               smartmodules=args.smartmodules or None)
    out = sys.stdout.buffer
    try:
        return await _print_records(args, consumer, out)
    except BrokenPipeError:
        # The reader went away (`kolk consume | head`): stop quietly, and keep Python's own
        # flush at exit from complaining about the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        await consumer.close()
        return 0


async def _print_records(args: argparse.Namespace, consumer: Any, out: BinaryIO) -> int:
    count = 0
    async for batch in consumer.batches():
        for rec in batch:
            _write(args, rec, out)
            count += 1
            if args.max is not None and count >= args.max:
                out.flush()
                await consumer.close()
                return 0
        out.flush()
    return 0


EXIT_TERMINATED = 143  # 128 + SIGTERM, what a shell reports for a command ended by SIGTERM
# Where a group consumer cannot be told to start: the group's committed offsets decide.
_NOT_WITH_GROUP = (("offset", "--offset"), ("tail", "--tail"), ("from_timestamp", "--from-timestamp"),
                   ("partition", "--partition"))


async def _consume_group(args: argparse.Namespace, client: AsyncClient) -> int:
    """``kolk consume TOPIC --group G``: a group member that commits what it printed, also on
    Ctrl-C, --max and -d (close commits the positions of the records handed out). With --max the
    records are taken one at a time, so the commit covers exactly the records printed."""
    for attr, flag in _NOT_WITH_GROUP:
        if getattr(args, attr) is not None:
            raise KolkError(f"--group cannot be combined with {flag}: the group assigns the partitions and its "
                            "committed offsets say where each starts (move them with `kolk consumer reset`)")
    start = Offset.beginning() if args.from_beginning else Offset.end()
    consumer = client.consumer(args.topic, group=args.group, start=start, stop_at_end=args.disconnect,
                               smartmodules=args.smartmodules or None)
    out = sys.stdout.buffer
    # SIGTERM (a service manager stopping it) ends the run as Ctrl-C does: commit, leave, exit.
    loop, task, terminated = asyncio.get_running_loop(), asyncio.current_task(), []
    loop.add_signal_handler(signal.SIGTERM, lambda: (terminated.append(True), task and task.cancel()))
    try:
        if args.max is None:
            return await _print_records(args, consumer, out)
        count = 0
        async for rec in consumer:
            _write(args, rec, out)
            count += 1
            if count >= args.max:
                break
        out.flush()
        return 0
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except asyncio.CancelledError:
        if not terminated:
            raise
        return EXIT_TERMINATED
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await consumer.close()  # commits (the records handed out) and leaves the group


def _write(args: argparse.Namespace, rec: Any, out: BinaryIO) -> None:
    if args.output == "raw":
        out.write((rec.value or b"") + b"\n")
    elif args.output == "json":
        out.write(json.dumps({"partition": rec.partition, "offset": rec.offset, "timestamp": rec.timestamp,
                              "key": _text(rec.key), "value": _text(rec.value)}).encode() + b"\n")
    else:
        out.write(((rec.key + b" => ") if rec.key is not None else b"") + (rec.value or b"") + b"\n")


def _text(b: bytes | None) -> str | None:
    if b is None:
        return None
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(b).decode()


def dispatch(args: argparse.Namespace) -> int:
    from .admin import resolve_sc

    try:
        sc = resolve_sc(args.sc)
        if args.command == "produce":
            return run(lambda: _produce(args, sc))
        return run(lambda: _consume(args, sc))
    except KolkError as e:
        print(f"kolk {args.command}: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
