"""The console's collector: keeps the newest cluster view, and only while someone looks.

One background task collects a :class:`~kolk.client.cluster_view.ClusterView` every
:data:`COLLECT_EVERY_S` through an ordinary client connected to the SC's own admin address with
the SC's own credentials (its node certificate with TLS, the cluster secret without), and only
while a page was asked for in the last :data:`IDLE_AFTER_S`: an idle cluster carries no console
load. A request that finds no view, or one older than :data:`STALE_AFTER_S` (the collector was
idle), waits up to :data:`FIRST_VIEW_WAIT_S` for a fresh one.

Topic rates (records in per second) are computed against the newest kept view at least
:data:`RATE_WINDOW_S` old (or the oldest kept, early on), not against the view just before:
a burst then shows as a rate for the whole window instead of for one collection period, which
a page refreshing every few seconds could miss. After an idle spell the kept views are dropped
and the first view has no rates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import replace
from typing import Any, Awaitable, Callable, Sequence

from ..client.cluster_view import ClusterView, collect_view
from ..protocol.errors import KolkError

log = logging.getLogger("kolk.console")

COLLECT_EVERY_S = 2.0
IDLE_AFTER_S = 60.0
STALE_AFTER_S = 10.0
FIRST_VIEW_WAIT_S = 10.0
COLLECT_TIMEOUT_S = 15.0  # one whole collection; each call inside has the client's own deadline
RATE_WINDOW_S = 10.0
HISTORY_MAX = 16  # views kept for the rate window (RATE_WINDOW_S / COLLECT_EVERY_S + a few)

Collect = Callable[[ClusterView | None], Awaitable[ClusterView]]


def rate_base(history: Sequence[tuple[float, ClusterView]], now: float, window_s: float) -> ClusterView | None:
    """The view to compute rates against, of ``history`` ((time collected, view), oldest
    first): the newest at least ``window_s`` old, else the oldest; None when there is none."""
    old_enough = [v for t, v in history if now - t >= window_s]
    if old_enough:
        return old_enough[-1]
    return history[0][1] if history else None


class ViewCollector:
    """``await current()`` gives the newest view (None if none could be collected yet; then
    :attr:`error` says why)."""

    def __init__(self, collect: Collect, *, every_s: float = COLLECT_EVERY_S, idle_after_s: float = IDLE_AFTER_S,
                 stale_after_s: float = STALE_AFTER_S, clock: Callable[[], float] = time.monotonic,
                 on_close: Callable[[], Awaitable[Any]] | None = None) -> None:
        self._collect = collect
        self._on_close = on_close  # e.g. closing the client it collects through
        self.every_s = every_s
        self.idle_after_s = idle_after_s
        self.stale_after_s = stale_after_s
        self._clock = clock
        self.latest: ClusterView | None = None
        self._latest_at = 0.0  # clock() when latest was collected
        self._history: deque[tuple[float, ClusterView]] = deque(maxlen=HISTORY_MAX)  # (clock(), view), oldest first
        self.error: str | None = None  # why the newest collection failed (None: it worked)
        self.collections = 0  # attempts so far (a test checks an idle console makes none)
        self._looked_at: float | None = None
        self.idle = False  # True while it waits for someone to look
        self._wake = asyncio.Event()
        self._done = asyncio.Condition()
        self._task: asyncio.Task[Any] | None = None

    @property
    def active(self) -> bool:
        return self._looked_at is not None and self._clock() - self._looked_at <= self.idle_after_s

    def _fresh(self) -> bool:
        return self.latest is not None and self._clock() - self._latest_at <= self.stale_after_s

    async def current(self, wait_s: float = FIRST_VIEW_WAIT_S) -> ClusterView | None:
        """The newest view; someone is looking, so collecting goes on (or starts again)."""
        self._looked_at = self._clock()
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
        self._wake.set()
        if not self._fresh():
            seen = self.collections
            try:
                async with asyncio.timeout(wait_s):
                    async with self._done:
                        await self._done.wait_for(lambda: self.collections > seen)
            except TimeoutError:
                pass  # answer with what there is (maybe nothing: the caller says why)
        return self.latest

    def _rate_base(self) -> ClusterView | None:
        if not self._fresh():
            self._history.clear()  # after an idle spell: no rates against stale views
            return None
        return rate_base(self._history, self._clock(), RATE_WINDOW_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._on_close is not None:
            await self._on_close()

    async def _run(self) -> None:
        while True:
            if not self.active:
                self._wake.clear()
                self.idle = True
                await self._wake.wait()
                self.idle = False
                continue
            previous = self._rate_base()
            try:
                async with asyncio.timeout(COLLECT_TIMEOUT_S):
                    view = await self._collect(previous)
                self.latest, self._latest_at, self.error = view, self._clock(), None
                # Rates need only each topic's high watermarks and the time: the rest of a view
                # (10,000 partitions are ~5 MB of PartitionViews) is not kept HISTORY_MAX times over.
                self._history.append((self._latest_at, replace(view, partitions=(), groups=(), denials=())))
            except (KolkError, OSError, TimeoutError) as e:
                line = f"{type(e).__name__}: {e}" if isinstance(e, TimeoutError) or not str(e) else str(e)
                if line != self.error:
                    log.warning("console: the cluster view could not be collected: %s", line)
                self.error = line
            except Exception:  # noqa: BLE001 - a bug in one collection must not end the console's
                log.exception("console: collecting the cluster view failed")
                self.error = "internal error while collecting (the SC's log has the details)"
            self.collections += 1
            async with self._done:
                self._done.notify_all()
            await asyncio.sleep(self.every_s)  # the collection period


def client_collector(client: Any, **kwargs: Any) -> ViewCollector:
    """A collector over ``client`` (an :class:`~kolk.client.client.AsyncClient`), which it
    closes when it is closed."""
    return ViewCollector(lambda previous: collect_view(client, previous), on_close=client.close, **kwargs)
