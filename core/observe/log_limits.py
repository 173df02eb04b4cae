"""Rate limits for log lines that repeat: a connection that keeps failing, a client that keeps
sending the same bad request. Without them one dead peer fills the log (issue 21: after a
restart, every follower logged every retry to the previous leader's address).

A line is keyed (for example by ``(peer, reason)``): the first occurrence of a key is logged at
once; later ones within :data:`WINDOW_S` of the last logged line are only counted, and the
next occurrence after the window is logged with ``(N more times in the last 30 s)``. At most
:data:`KEYS_MAX` keys are remembered (least recently seen forgotten first: a forgotten key is
logged again at its next occurrence, so memory is bounded and nothing is hidden for long).

:class:`RepeatLimiter` is pure (the clock is a parameter); :class:`RepeatFilter` applies it to
every record logged with ``extra={"repeat_key": key}``, in whichever module it was logged:
a module marks a line as repeatable without importing this one (the transport, the client
library and raft/ may not, DESIGN.md §1).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Hashable

WINDOW_S = 30.0
KEYS_MAX = 1_024
# The ``extra=`` key that marks a record as rate-limited, with its key as the value:
# ``log.warning("...", extra={"repeat_key": (peer, reason)})``.
REPEAT_KEY = "repeat_key"
_DECIDED = "_kolk_repeat_decided"


class RepeatLimiter:
    """Which occurrences of a keyed event to log: see the module's docstring."""

    def __init__(self, window_s: float = WINDOW_S, keys_max: int = KEYS_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0 or keys_max < 1:
            raise ValueError(f"a repeat limiter needs window_s > 0 and keys_max >= 1 (got {window_s}, {keys_max})")
        self.window_s = window_s
        self.keys_max = keys_max
        self._clock = clock
        # key -> [when its last line was logged, occurrences not logged since]
        self._keys: collections.OrderedDict[Hashable, list[Any]] = collections.OrderedDict()

    def occurred(self, key: Hashable) -> int | None:
        """Count one occurrence of ``key``: None when it is not to be logged, else how many
        occurrences were not logged since its last line (0 for a first or a lone one)."""
        now = self._clock()
        entry = self._keys.get(key)
        if entry is None:
            self._keys[key] = [now, 0]
            while len(self._keys) > self.keys_max:
                self._keys.popitem(last=False)
            return 0
        self._keys.move_to_end(key)
        if now - entry[0] >= self.window_s:
            suppressed = entry[1]
            entry[0], entry[1] = now, 0
            return suppressed
        entry[1] += 1
        return None

    def __len__(self) -> int:
        return len(self._keys)


def repeat_note(suppressed: int, window_s: float) -> str:
    """`` (N more times in the last 30 s)``, or "" when nothing was held back."""
    if suppressed <= 0:
        return ""
    times = "time" if suppressed == 1 else "times"
    return f" ({suppressed} more {times} in the last {window_s:.0f} s)"


class RepeatFilter(logging.Filter):
    """A handler filter that rate-limits every record carrying ``extra={"repeat_key": key}``
    (:data:`REPEAT_KEY`) through one :class:`RepeatLimiter`; records without one pass.

    A record, not an import: the transport (core/protocol), the client library and raft/ may
    not import kolk.observe, yet their repeated lines are limited in a node that installed
    this (core/observe/logs.py). The decision is stored on the record, so the stderr handler
    and the ring, which share this filter, count an occurrence once and agree on it."""

    def __init__(self, limiter: RepeatLimiter | None = None) -> None:
        super().__init__()
        self.limiter = limiter if limiter is not None else RepeatLimiter()
        self._lock = threading.Lock()  # records come from worker threads too

    def filter(self, record: logging.LogRecord) -> bool:
        key = getattr(record, REPEAT_KEY, None)
        if key is None:
            return True
        decided = getattr(record, _DECIDED, None)
        if decided is None:
            with self._lock:
                suppressed = self.limiter.occurred(key)
            decided = suppressed is not None
            setattr(record, _DECIDED, decided)
            if suppressed:
                record.msg = str(record.msg) + repeat_note(suppressed, self.limiter.window_s).replace("%", "%%")
        return decided
