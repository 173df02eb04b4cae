"""A node's log lines: the text and JSON formats, the node name on every line, and a bounded
ring of the most recent lines (what ``kolk cluster diagnostics`` collects from a running node).

:func:`setup_logging` replaces ``logging.basicConfig`` in a server process (core/node/serve.py).
Every record that reaches the root logger's handlers is stamped with the node (``sc-1``,
``spu-2``) by a handler filter, so lines from pysyncobj, asyncio or any other library carry it
too. Two formats, one line per record in both (a traceback follows a text line, and is one
``exc`` field of a JSON line):

- text: ``2026-12-05T19:15:52.469Z INFO sc-1 kolk.sc: topic orders created ... [req=3-17 peer=alice@10.0.0.5]``
- json: ``{"ts": "2026-12-05T19:15:52.469Z", "level": "INFO", "logger": "kolk.sc", "node": "sc-1",
  "msg": "topic orders created ...", "req": "3-17", "peer": "alice@10.0.0.5"}``

Fields given through ``extra=`` are written only when they are among :data:`EXTRA_FIELDS`
(one list of what a line may carry, so a JSON consumer knows every key; docs/operations.md).
"""

from __future__ import annotations

import collections
import json
import logging
import sys
import threading
import time
import traceback
from typing import Any, TextIO

from .log_limits import RepeatFilter

LOG_FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Keys a line may carry beside ts, level, logger, node and msg, when a call passes them in
# ``extra=``: the request id ("<connection>-<request>", core/protocol/channel_server.py), who
# is on the other end, the call, and the error code an answer carried.
EXTRA_FIELDS = ("req", "peer", "call", "code")

# The ring of recent lines (diagnostics): at most this many lines and bytes; one line longer
# than LINE_BYTES_MAX (a huge traceback) is cut to it in the ring, never on stderr.
RING_LINES_MAX = 5_000
RING_BYTES_MAX = 2 << 20
LINE_BYTES_MAX = 64 << 10


def _timestamp(created: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-12-05T19:15:52.469Z."""
    seconds = int(created)
    ms = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"


def _extras(record: logging.LogRecord) -> list[tuple[str, Any]]:
    return [(k, getattr(record, k)) for k in EXTRA_FIELDS if getattr(record, k, None) not in (None, "")]


def _node(record: logging.LogRecord) -> str:
    return getattr(record, "node", "-")


def _traceback(record: logging.LogRecord) -> str | None:
    if record.exc_info and record.exc_info[0] is not None:
        return "".join(traceback.format_exception(*record.exc_info)).rstrip()
    if record.exc_text:
        return record.exc_text
    return None


class TextFormatter(logging.Formatter):
    """``TS LEVEL node logger: msg [req=.. peer=..]``; a traceback on the lines below."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record.created)} {record.levelname} {_node(record)} {record.name}: {record.getMessage()}"
        extras = _extras(record)
        if extras:
            line += " [" + " ".join(f"{k}={v}" for k, v in extras) + "]"
        tb = _traceback(record)
        if tb:
            line += "\n" + tb
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, node, msg, the extras given, and ``exc``
    (the traceback as one string) when the record carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": _timestamp(record.created), "level": record.levelname, "logger": record.name,
                               "node": _node(record), "msg": record.getMessage()}
        for k, v in _extras(record):
            out[k] = v if isinstance(v, (int, float, bool)) else str(v)
        tb = _traceback(record)
        if tb:
            out["exc"] = tb
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: a line is plain ASCII whatever a message holds (a topic name, a peer's
        # certificate name), so a shipper never meets a broken encoding.
        return json.dumps(out, ensure_ascii=True, default=str)


def formatter_for(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")


class NodeFilter(logging.Filter):
    """Stamps ``node`` on every record a handler sees (ours and every library's)."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        return True


class LogRing(logging.Handler):
    """The last lines this process logged, formatted: at most ``lines_max`` lines and
    ``bytes_max`` bytes (UTF-8) together; the oldest go first. Thread-safe (the handler's lock)."""

    def __init__(self, lines_max: int = RING_LINES_MAX, bytes_max: int = RING_BYTES_MAX,
                 line_bytes_max: int = LINE_BYTES_MAX) -> None:
        super().__init__()
        if lines_max < 1 or line_bytes_max < 1 or bytes_max < line_bytes_max:
            raise ValueError(f"a log ring needs lines_max >= 1 and bytes_max ({bytes_max}) >= line_bytes_max "
                             f"({line_bytes_max}) >= 1")
        self.lines_max, self.bytes_max, self.line_bytes_max = lines_max, bytes_max, line_bytes_max
        self._lines: collections.deque[tuple[str, int]] = collections.deque()
        self._bytes = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging never raises into the caller
            self.handleError(record)
            return
        size = len(line.encode("utf-8", "replace"))
        if size > self.line_bytes_max:
            line = line.encode("utf-8", "replace")[:self.line_bytes_max - 20].decode("utf-8", "ignore") + " ...(cut)"
            size = len(line.encode("utf-8", "replace"))
        # emit() runs under the handler's lock (Handler.handle), as does lines().
        self._lines.append((line, size))
        self._bytes += size
        while len(self._lines) > self.lines_max or self._bytes > self.bytes_max:
            self._bytes -= self._lines.popleft()[1]

    def lines(self) -> list[str]:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            return [line for line, _ in self._lines]

    @property
    def size_bytes(self) -> int:
        return self._bytes


_ring: LogRing | None = None
_installed: list[logging.Handler] = []
_setup_lock = threading.Lock()


def recent_log_lines() -> list[str]:
    """The lines this process logged most recently (oldest first; at most RING_LINES_MAX lines
    and RING_BYTES_MAX bytes); empty before :func:`setup_logging`."""
    ring = _ring
    return ring.lines() if ring is not None else []


def check_level(level: str) -> str:
    """``level`` in upper case; ValueError naming it unless it is one of :data:`LEVELS`."""
    up = level.upper()
    if up not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    return up


def setup_logging(node: str, level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> LogRing:
    """Send every log record at ``level`` and above to ``stream`` (stderr) in ``fmt``, stamped
    with ``node``, and keep the recent lines in the ring :func:`recent_log_lines` reads.

    Records logged with ``extra={"repeat_key": key}`` are rate-limited per key
    (core/observe/log_limits.py). Called again (tests; a process that learns its name late),
    it replaces what it installed before; handlers others installed are left alone."""
    global _ring
    up = check_level(level)
    formatter = formatter_for(fmt)
    with _setup_lock:
        root = logging.getLogger()
        for h in _installed:
            root.removeHandler(h)
        _installed.clear()
        stamp = NodeFilter(node)
        repeats = RepeatFilter()  # one for both handlers: they agree on which repeats to drop
        out = logging.StreamHandler(stream if stream is not None else sys.stderr)
        ring = LogRing()
        for h in (out, ring):
            h.addFilter(repeats)
            h.addFilter(stamp)
            h.setFormatter(formatter)
            root.addHandler(h)
            _installed.append(h)
        root.setLevel(up)
        _ring = ring
    return ring
