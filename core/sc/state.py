"""The SC's replicated state machine: the metadata State folded from Raft commands.

``apply`` runs on pysyncobj's thread: it calls the pure ``kolk.metadata.apply`` and swaps the
state reference (immutable, so readers on the event loop see a consistent State without a
lock), then hands the events to the event loop, which owns the watch change log.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from ..metadata.apply import Event, apply_bytes
from ..metadata.objects import State
from ..metadata.watch import ChangeLog


class MetadataStateMachine:
    def __init__(self, loop: asyncio.AbstractEventLoop, changelog_capacity: int = 10_000) -> None:
        self.state = State()
        self._loop = loop
        self.changelog = ChangeLog(changelog_capacity)  # owned by the event loop
        self.changed = asyncio.Event()
        self._listeners: list[Callable[[State], None]] = []

    # -- pysyncobj's thread

    def apply(self, command: bytes) -> dict[str, Any]:
        applied = apply_bytes(self.state, command)
        self.state = applied.state
        if applied.events:
            self._loop.call_soon_threadsafe(self._deliver, applied.events)
        return applied.outcome.to_json()

    def snapshot(self) -> bytes:
        return self.state.encode()

    def restore(self, data: bytes) -> None:
        self.state = State.decode(data)
        version = self.state.version
        self._loop.call_soon_threadsafe(self._reset, version)

    # -- the event loop

    def _deliver(self, events: tuple[Event, ...]) -> None:
        self.changelog.append(events)
        self._wake()

    def _reset(self, version: int) -> None:
        self.changelog.reset(version)
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()
        for listener in list(self._listeners):
            listener(self.state)

    def add_listener(self, fn: Callable[[State], None]) -> None:
        self._listeners.append(fn)
