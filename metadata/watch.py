"""The change log that watch streams are served from: bounded, pure.

A watcher asks for everything after version V. If the log still holds every event after V,
it gets those deltas; if V is older than the oldest event kept (the watcher fell too far
behind, or connected for the first time with V = 0 on a long-lived cluster), it gets a full
sync: every object and the current version, then deltas from there (DESIGN.md §3).
"""

from __future__ import annotations

from collections import deque
from typing import Iterable

from .apply import Event


class ChangeLog:
    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._events: deque[Event] = deque(maxlen=capacity)
        # Every event at a version above this is in the log.
        self._complete_after = 0

    def reset(self, version: int) -> None:
        """The state was replaced (snapshot restore): nothing before ``version`` is known."""
        self._events.clear()
        self._complete_after = version

    def append(self, events: Iterable[Event]) -> None:
        for e in events:
            if len(self._events) == self.capacity:
                self._complete_after = self._events[0].version
            self._events.append(e)

    def since(self, version: int) -> list[Event] | None:
        """Events with a version above ``version``, or None when a full sync is needed."""
        if version < self._complete_after:
            return None
        # Events of one version are contiguous; the log is ordered by version.
        out = [e for e in self._events if e.version > version]
        if out and out[0].version > version + 1 and version + 1 > self._complete_after:
            return None
        return out
