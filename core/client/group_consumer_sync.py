"""The synchronous group consumer (``kolk.Client().consumer(topic, group=...)``): an
:class:`AsyncGroupConsumer` run on the client's event loop thread (client.py's _LoopThread)."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Coroutine, Iterator, Mapping

from ..groups.names import TopicPartition
from ..protocol.errors import InvalidRequestError
from .consumer import ConsumerRecord
from .group_consumer import CLOSE_DEADLINE_S, COMMIT_DEADLINE_S, AsyncGroupConsumer


class GroupConsumer:
    """Synchronous face of :class:`AsyncGroupConsumer` (``kolk.Client().consumer(topic,
    group=...)``), same semantics: ``poll(timeout_s)``, iteration (records, or ``batches()``
    for lists), ``commit()`` / ``commit(offsets)``, ``assignment()``, ``member_id``,
    ``generation``, ``close()``. The callbacks run on the client's event loop thread."""

    def __init__(self, thread: Any, inner: AsyncGroupConsumer) -> None:
        self._t = thread  # client.py's _LoopThread
        self._c = inner

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run ``coro`` on the client's loop and wait for it; refused from that loop itself (a
        callback of this consumer), where waiting would wait on itself forever."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is self._t.loop:
            coro.close()
            raise InvalidRequestError("a callback of the synchronous group consumer runs on the client's thread and "
                                      "cannot call the consumer (it would wait on itself): commit before the next "
                                      "poll, or use kolk.AsyncClient, whose callbacks may await consumer.commit()")
        return self._t.call(coro, timeout)

    def __enter__(self) -> "GroupConsumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def member_id(self) -> str:
        return self._c.member_id

    @property
    def generation(self) -> int:
        return self._c.generation

    def assignment(self) -> frozenset[TopicPartition]:
        async def get() -> frozenset[TopicPartition]:
            return self._c.assignment()
        return self._call(get())

    def poll(self, timeout_s: float) -> list[ConsumerRecord]:
        # A poll may reconcile (commits, offset look-ups) past its timeout: allow for that.
        return self._call(self._c.poll(timeout_s), timeout_s + COMMIT_DEADLINE_S + self._c.client.timeout_s)

    def commit(self, offsets: Mapping[int | TopicPartition, int] | None = None) -> None:
        self._call(self._c.commit(offsets))

    def batches(self) -> Iterator[list[ConsumerRecord]]:
        return self._iterate(self._c.batches())

    def _iterate(self, gen: AsyncIterator[Any]) -> Iterator[Any]:
        while True:
            try:
                yield self._call(gen.__anext__())
            except StopAsyncIteration:
                return

    def __iter__(self) -> Iterator[ConsumerRecord]:
        handout = self._c.handout
        for chunks in self._iterate(self._c.pushes()):
            for p, records, end in chunks:
                handout.hold(p, records)
                for rec in records:
                    handout.n += 1
                    yield rec
                handout.finish(p, end)

    def close(self) -> None:
        self._call(self._c.close(), CLOSE_DEADLINE_S + 5)
