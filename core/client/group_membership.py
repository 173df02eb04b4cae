"""A consumer's membership in its group: the background heartbeat loop of protocol.md
(docs/consumers.md "The protocol").

:class:`Membership` owns the member's id, its epoch and the coordinator's latest assignment for
it; the consumer owns its partitions (streams, positions) and tells the membership what it
holds with :meth:`Membership.set_owned` at its poll boundaries. The loop:

1. sends a heartbeat (a join with memberId "" and epoch 0 first) carrying ``owned`` = what the
   consumer holds now, and waits ``waitMs`` = the coordinator's heartbeat interval for the
   answer (a long poll: the coordinator answers early when the assignment changes);
2. if the answer's assignment differs from ``owned``, publishes it as :attr:`target`, wakes the
   consumer, and sends the next heartbeat as soon as the consumer has reconciled (or after one
   interval, so the session stays alive while the application is busy between polls);
   otherwise sends the next heartbeat at once;
3. ``staleMember``: the coordinator removed the member. Everything it held goes to :attr:`lost`
   (the consumer drops it WITHOUT committing), and it joins again as a new member;
4. a retriable failure (``notCoordinator``, ``coordinatorLoading``, a lost connection: handled
   inside :func:`group_call`, which finds the coordinator again) that outlasts one call's
   deadline is logged and the same heartbeat is sent again after a backoff (>= 50 ms): the
   session keeps running while the coordinator moves;
5. any other error (``denied``, ``notFound`` of the topic, ``invalidArgument``) ends the loop and
   is kept in :attr:`error`; the consumer raises it from its next poll. ``fencedInstance`` (a newer
   process joined with this static member's ``group_instance_id``) also drops every partition as
   lost, without rejoining.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..groups.names import TopicPartition
from ..protocol import limits as L
from ..protocol.errors import FencedInstanceError, KolkError, StaleMemberError
from .coordinator import backoff_s, group_call

if TYPE_CHECKING:
    from .client import AsyncClient

log = logging.getLogger("kolk.groups")

HEARTBEAT_INTERVAL_MS_DEFAULT = 3_000  # when a coordinator's answer names none
ANSWER_MARGIN_S = 3.0  # a held heartbeat's answer may come this long after its waitMs
MIN_HEARTBEAT_GAP_S = 0.05  # never heartbeat faster than this unless what the member holds changed
LEAVE = -1  # memberEpoch of a clean leave: the partitions are free at once
LEAVE_STATIC = -2  # a static member's leave: its entry and partitions wait a session timeout for it


def wire_partitions(parts: Iterable[TopicPartition]) -> list[dict[str, Any]]:
    """A set of partitions as the wire's ``List(TopicPartitions)``, topics and partitions sorted."""
    by_topic: dict[str, list[int]] = {}
    for tp in parts:
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return [{"topic": t, "partitions": sorted(ps)} for t, ps in sorted(by_topic.items())]


def read_partitions(wire: Any) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(tp.topic, int(p)) for tp in wire for p in tp.partitions)


class Membership:
    def __init__(self, client: "AsyncClient", group: str, topics: list[str], *, instance_id: str | None,
                 session_timeout_ms: int, rebalance_timeout_ms: int, assignor: str,
                 wake: Callable[[], None]) -> None:
        self.client = client
        self.group = group
        self.topics = topics
        self.instance_id = instance_id
        self.session_timeout_ms = session_timeout_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.assignor = assignor
        self._wake = wake  # tells the consumer there is something to reconcile
        self.member_id = ""
        self.epoch = 0
        self.interval_ms = 0
        self.owned: frozenset[TopicPartition] = frozenset()  # what the consumer holds, as it last said
        # The coordinator's assignment and its epoch while it differs from owned; None when not.
        self.target: tuple[frozenset[TopicPartition], int] | None = None
        self.lost: frozenset[TopicPartition] = frozenset()  # dropped by a fence, not yet by the consumer
        self.lost_epoch = 0
        self.incarnation = 0  # +1 at every fence: a reconcile that straddles one gives up its result
        self.error: KolkError | None = None
        self.heartbeats = 0  # answered heartbeats, for statistics and tests
        self._owned_changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def joined(self) -> bool:
        return bool(self.member_id)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"kolk-heartbeat-{self.group}")

    def set_owned(self, owned: frozenset[TopicPartition], incarnation: int) -> bool:
        """The consumer now holds ``owned`` (a reconcile that began at ``incarnation``). False,
        and ``owned`` counted as lost, when a fence came in between: the member those partitions
        were given to is gone."""
        if incarnation != self.incarnation:
            self.lost |= owned
            return False
        self.owned = owned
        if self.target is not None and self.target[0] == owned:
            self.target = None
        self._owned_changed.set()
        return True

    def take_lost(self) -> tuple[frozenset[TopicPartition], int]:
        lost, self.lost = self.lost, frozenset()
        return lost, self.lost_epoch

    def _fields(self, epoch: int, wait_ms: int) -> dict[str, Any]:
        return {"group": self.group, "memberId": self.member_id, "instanceId": self.instance_id or "",
                "memberEpoch": epoch, "topics": self.topics, "owned": wire_partitions(self.owned),
                "sessionTimeoutMs": self.session_timeout_ms, "rebalanceTimeoutMs": self.rebalance_timeout_ms,
                "assignor": self.assignor, "waitMs": wait_ms}

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            wait_ms = min(self.interval_ms or HEARTBEAT_INTERVAL_MS_DEFAULT, L.HEARTBEAT_WAIT_MS_MAX) if self.joined else 0
            sent_owned = self.owned
            self._owned_changed.clear()
            started = loop.time()
            try:
                r = await group_call(self.client, self.group, "groupHeartbeat", self._fields(self.epoch, wait_ms),
                                     deadline_s=max(self.session_timeout_ms / 1000, wait_ms / 1000 + ANSWER_MARGIN_S),
                                     attempt_timeout_s=wait_ms / 1000 + ANSWER_MARGIN_S)
            except FencedInstanceError as e:
                # Another process took over this static member: dropping everything, not
                # rejoining (two processes with one instance id would take turns forever).
                log.error("group %s: %s", self.group, e)
                self._fence()
                self.error = e
                return
            except StaleMemberError as e:
                log.info("group %s: member %s was removed (%s); dropping %s partition(s) without committing "
                         "and joining again", self.group, self.member_id or "-", e, len(self.owned))
                self._fence()
                await asyncio.sleep(MIN_HEARTBEAT_GAP_S)
                continue
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - a dead loop must not leave the member silently stalled
                if not isinstance(e, KolkError):
                    log.exception("group %s: the heartbeat loop failed", self.group)
                    self.error = KolkError(f"the heartbeat loop of group {self.group} failed: {e!r}")
                    self._wake()
                    return
                if e.retriable:
                    # Rate-limited per group and reason where the process installed the node's log
                    # setup (core/observe/log_limits.py); an application's own logging sees each.
                    log.warning("group %s: heartbeat of member %s failed (%s); still trying", self.group,
                                self.member_id or "(joining)", e,
                                extra={"repeat_key": ("group heartbeat", self.group, str(e))})
                    await asyncio.sleep(max(MIN_HEARTBEAT_GAP_S, backoff_s(failures)))
                    failures += 1
                    continue
                log.error("group %s: heartbeat refused: %s", self.group, e)
                self.error = e
                self._wake()
                return
            failures = 0
            self.heartbeats += 1
            self.member_id = r.memberId
            self.epoch = r.memberEpoch
            self.interval_ms = r.heartbeatIntervalMs or HEARTBEAT_INTERVAL_MS_DEFAULT
            assignment = read_partitions(r.assignment)
            if assignment != self.owned:
                self.target = (assignment, self.epoch)
                self._wake()
                if not self._owned_changed.is_set():
                    # Keep the session alive while the application has not reached a poll
                    # boundary; resend at once when it has reconciled.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.interval_ms / 1000):
                            await self._owned_changed.wait()
            else:
                self.target = None
                if loop.time() - started < MIN_HEARTBEAT_GAP_S and self.owned == sent_owned:
                    await asyncio.sleep(MIN_HEARTBEAT_GAP_S)  # a coordinator that does not hold the answer

    def _fence(self) -> None:
        """The coordinator removed this member: all it holds is lost; join again from scratch."""
        self.lost |= self.owned
        self.lost_epoch = self.epoch
        self.owned = frozenset()
        self.target = None
        self.member_id = ""
        self.epoch = 0
        self.incarnation += 1
        self._wake()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, KolkError):
                await task

    async def leave(self, deadline_s: float) -> None:
        """Stop heartbeating and leave the group (epoch -1; -2 for a static member, whose
        partitions then wait for it a session timeout). Errors are logged: a member that cannot
        reach its coordinator is removed after its session timeout anyway."""
        await self.stop()
        if not self.joined:
            return
        epoch = LEAVE_STATIC if self.instance_id else LEAVE
        fields = self._fields(epoch, 0)
        fields["owned"] = []
        try:
            await group_call(self.client, self.group, "groupHeartbeat", fields, deadline_s=deadline_s)
        except KolkError as e:
            log.info("group %s: member %s could not leave (%s); the coordinator removes it after %d ms",
                     self.group, self.member_id, e, self.session_timeout_ms)
        self.member_id = ""
        self.owned = frozenset()
