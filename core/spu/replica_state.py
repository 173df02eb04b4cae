"""One partition replica's protocol state, as a pure state machine (docs/replication.md).

:class:`ReplicaState` is the one owner of what the replica protocol decides on an SPU: the
view of the SC's metadata (leader, epoch, replicas, committed in-sync set), the leader role
(the epoch it leads, where that epoch began, each follower's progress, the additions asked
of the SC and not yet seen committed, the one in-sync request in flight), the fences (a stale
epoch, a failed disk), the follower role (which leader and epoch it follows) and the high
watermark. It is shaped as etcd-raft's ``raft`` struct: events go in through
:meth:`ReplicaState.step`, which returns the effects the SPU must carry out. It does no I/O,
reads no clock and starts no task: time and the log's positions come in with the events, so
the same events always give the same effects (tests/test_replica_state.py drives it with
random histories against a model of a partition and its SC).

Events (frozen dataclasses), as the SPU feeds them:

* :class:`MetadataChanged`: the SC's partition object (leader, epoch, replicas, committed
  set), with this replica's log end and durable end and the time. Leading starts at a new
  epoch (every follower's progress unknown again); following starts for a new (leader, epoch).
* :class:`Durable`: this replica's log is fsynced up to ``offset`` (the leader's group commit).
* :class:`FollowerCall`: a follower called (``replicaFetch`` or ``epochEndOffset``) at an
  epoch: answered, refused, or, if the follower knows a newer epoch, the leader fences itself.
* :class:`FollowerFetched`: a follower fetched from ``offset``, its durable log end.
* :class:`Tick`: time passed: the leader decides whether to ask the SC to shrink or grow the
  in-sync set (one request in flight at a time).
* :class:`IsrChangeAnswered`: what came of that request (committed, stale, conflict, unknown).
* :class:`DiskFault`: the log failed: the replica is fenced for good (core/spu/disk_faults.py).
* Follower side: :class:`LeaderHighWatermark` (the leader's mark, carried by a fetch),
  :class:`Diverged` (where the log must be cut to match the leader's, KIP-279),
  :class:`LeaderStartsPast` (the leader's log starts past our end) and :class:`LogCut` (the
  log after a truncation or reset: its high watermark and durable end).

Effects (frozen dataclasses): :class:`AdvanceHighWatermark`, :class:`RequestIsrChange`,
:class:`Fence`, :class:`StartLeading`, :class:`StartFollowing`, :class:`StopFollowing`,
:class:`Refuse` (an answer to a follower's call), :class:`Truncate`,
:class:`RefuseTruncation` (the leader lost acknowledged records: report it), :class:`ResetLog`.

The arithmetic (the high watermark over a set, which followers to drop or add) is in
core/spu/isr.py, pure functions this module calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

from .isr import FollowerProgress, effective_isr, high_watermark, isr_expand, isr_shrink

# ---------------------------------------------------------------------------- events


@dataclass(frozen=True)
class MetadataChanged:
    """The SC's view of the partition, as the metadata watch brought it."""

    leader: int | None
    epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    log_end: int  # this replica's log end now: where a new leader's epoch begins
    durable: int  # this replica's fsynced end now
    now_ms: int
    last_unclean_epoch: int | None = None  # status.last_unclean_epoch (an operator's unclean election)


@dataclass(frozen=True)
class Durable:
    """This replica's log is fsynced up to ``offset`` (its durable end)."""

    offset: int


@dataclass(frozen=True)
class FollowerCall:
    """Follower ``follower`` called this (leading) replica at ``epoch``."""

    follower: int
    epoch: int


@dataclass(frozen=True)
class FollowerFetched:
    """Follower ``follower`` fetched from ``offset``: everything below it is fsynced there."""

    follower: int
    offset: int
    leader_log_end: int  # this replica's log end when the fetch came
    durable: int  # this replica's fsynced end when the fetch came
    now_ms: int


@dataclass(frozen=True)
class Tick:
    now_ms: int


IsrOutcome = Literal["committed", "stale", "conflict", "unknown"]


@dataclass(frozen=True)
class IsrChangeAnswered:
    """The SC's answer to ``request``: ``committed``; ``stale`` (a newer epoch or another
    leader: this one is deposed); ``conflict`` (the set changed since it was computed, not
    applied); ``unknown`` (no answer, or an error: it may or may not have been committed)."""

    request: "RequestIsrChange"
    outcome: IsrOutcome


@dataclass(frozen=True)
class DiskFault:
    reason: str


@dataclass(frozen=True)
class LeaderHighWatermark:
    """A follower's fetch brought the leader's high watermark; ``log_end`` is ours."""

    high_watermark: int
    log_end: int


@dataclass(frozen=True)
class Diverged:
    """Following ``leader`` at ``epoch``, this log must be cut at ``target`` to match the
    leader's (the end of the latest common epoch, KIP-279)."""

    target: int
    log_start: int
    log_end: int
    latest_epoch: int  # the latest leader epoch of a batch in this log
    leader: int
    epoch: int


@dataclass(frozen=True)
class LeaderStartsPast:
    """The leader's log starts at ``leader_log_start``, past this log's end ``log_end``."""

    leader_log_start: int
    log_end: int


@dataclass(frozen=True)
class LogCut:
    """The log after a :class:`Truncate` or :class:`ResetLog` was carried out."""

    high_watermark: int
    durable: int


Event = Union[MetadataChanged, Durable, FollowerCall, FollowerFetched, Tick, IsrChangeAnswered, DiskFault,
              LeaderHighWatermark, Diverged, LeaderStartsPast, LogCut]

# ---------------------------------------------------------------------------- effects


@dataclass(frozen=True)
class AdvanceHighWatermark:
    """Set the log's high watermark to ``offset`` and wake the waiters: ``acks=all`` writes
    below it are answered, consumers read up to it."""

    offset: int


@dataclass(frozen=True)
class RequestIsrChange:
    """Ask the SC for in-sync set ``isr`` at ``epoch``, computed from the committed set
    ``based_on``; ``adds`` are the followers first asked for in this request."""

    isr: tuple[int, ...]
    epoch: int
    based_on: tuple[int, ...]
    adds: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Fence:
    """Acknowledge nothing more: ``kind`` ``disk`` (the log failed; for good) or ``epoch``
    (a newer epoch exists; until the metadata brings it)."""

    kind: Literal["disk", "epoch"]
    reason: str


@dataclass(frozen=True)
class StartLeading:
    epoch: int
    epoch_start: int


@dataclass(frozen=True)
class StartFollowing:
    """Follow ``leader`` at ``epoch`` (any earlier follower loop stops first)."""

    leader: int
    epoch: int


@dataclass(frozen=True)
class StopFollowing:
    pass


@dataclass(frozen=True)
class Refuse:
    """Answer a follower's call with error ``code`` (retriable)."""

    code: Literal["notFound", "notLeader", "staleEpoch"]
    message: str


@dataclass(frozen=True)
class Truncate:
    """Cut the log at ``offset`` (from ``log_end``; the high watermark is ``high_watermark``)."""

    offset: int
    log_end: int
    high_watermark: int


@dataclass(frozen=True)
class RefuseTruncation:
    """The leader's log ends below this replica's high watermark: following it would cut
    acknowledged records. Refuse and report the leader to the SC."""

    leader: int
    epoch: int
    log_end: int
    target: int
    high_watermark: int

    @property
    def message(self) -> str:
        return (f"leader SPU {self.leader} at epoch {self.epoch} would have this follower cut its log from "
                f"{self.log_end} to {self.target}, below its high watermark {self.high_watermark}: the leader "
                "lost acknowledged records")


@dataclass(frozen=True)
class ResetLog:
    """Start the log again, empty, at ``offset`` (the leader's log start)."""

    offset: int


Effect = Union[AdvanceHighWatermark, RequestIsrChange, Fence, StartLeading, StartFollowing, StopFollowing, Refuse,
               Truncate, RefuseTruncation, ResetLog]

# ---------------------------------------------------------------------------- state


@dataclass
class ReplicaState:
    """The replica protocol state of SPU ``me``'s replica of partition ``name``.

    Only :meth:`step` changes it (the SPU reads it). ``high_watermark`` and ``durable`` start
    as the log has them when it is opened.
    """

    me: int
    lag_max_ms: int
    name: str = ""
    high_watermark: int = 0
    durable: int = 0
    # TEST ONLY (SpuConfig.ignore_storage_id_for_tests): truncate below the high watermark.
    truncate_acknowledged_for_tests: bool = False
    # The SC's metadata.
    leader: int | None = None
    epoch: int = 0
    replicas: tuple[int, ...] = ()
    isr: tuple[int, ...] = ()  # the committed in-sync set
    last_unclean_epoch: int | None = None
    # Leader role, valid for ``led_epoch`` only.
    led_epoch: int | None = None
    epoch_start: int = 0  # the log end when this leader took over
    progress: dict[int, FollowerProgress] = field(default_factory=dict)
    pending_adds: set[int] = field(default_factory=set)  # asked of the SC, not seen committed yet
    isr_in_flight: RequestIsrChange | None = None
    # An epoch this replica learned is stale (from a follower, or the SC refusing an in-sync
    # change) before the metadata caught up: while ``epoch <= fenced_epoch`` it acknowledges nothing.
    fenced_epoch: int | None = None
    failure: str | None = None  # why the disk fenced it; it serves nothing until rebuilt
    # Follower role: the (leader, epoch) followed.
    followed: tuple[int, int] | None = None

    # ------------------------------------------------------------ queries

    @property
    def is_leader(self) -> bool:
        return self.leader == self.me

    @property
    def fenced(self) -> bool:
        """It must acknowledge nothing: a newer leader exists, or its disk failed."""
        return self.failure is not None or (self.fenced_epoch is not None and self.fenced_epoch >= self.epoch)

    @property
    def leading(self) -> bool:
        """It leads the current epoch and may acknowledge."""
        return self.is_leader and self.led_epoch == self.epoch and not self.fenced

    def effective_isr(self) -> list[int]:
        """The committed set plus the additions asked for (core/spu/isr.py, KIP-497)."""
        return effective_isr(self.isr, sorted(self.pending_adds))

    # ------------------------------------------------------------ transitions

    def step(self, event: Event) -> list[Effect]:
        """Apply ``event``; the effects the SPU must carry out, in order."""
        handler = _HANDLERS.get(type(event))
        if handler is None:
            raise TypeError(f"not a replica event: {event!r}")
        return handler(self, event)

    def _advance(self) -> list[Effect]:
        """Move the high watermark as far as the (effective) in-sync set allows."""
        if not self.leading:
            return []
        target = high_watermark(self.me, self.durable, self.effective_isr(), self.progress)
        if target > self.high_watermark:
            self.high_watermark = target
            return [AdvanceHighWatermark(target)]
        return []

    def _on_metadata(self, ev: MetadataChanged) -> list[Effect]:
        self.leader, self.epoch = ev.leader, ev.epoch
        self.replicas, self.isr = tuple(ev.replicas), tuple(ev.isr)
        self.last_unclean_epoch = ev.last_unclean_epoch
        self.durable = ev.durable
        if self.failure is not None:
            return []  # fenced by its disk: no role until rebuilt
        out: list[Effect] = []
        if self.is_leader:
            if self.followed is not None:
                self.followed = None
                out.append(StopFollowing())
            if self.led_epoch != self.epoch:
                # Leading at a new epoch: every follower's progress is unknown again.
                self.led_epoch = self.epoch
                self.epoch_start = ev.log_end
                self.progress = {r: FollowerProgress(None, ev.now_ms) for r in self.replicas if r != self.me}
                self.pending_adds.clear()
                out.append(StartLeading(self.epoch, self.epoch_start))
            for r in self.replicas:
                if r != self.me and r not in self.progress:
                    self.progress[r] = FollowerProgress(None, 0)
            for r in [r for r in self.progress if r not in self.replicas]:
                del self.progress[r]
            self.pending_adds -= set(self.isr)
            self.pending_adds &= set(self.replicas)
            out += self._advance()  # the set may have shrunk
        else:
            self.led_epoch = None
            want = (self.leader, self.epoch) if self.leader is not None else None
            if self.followed != want:
                if self.followed is not None:
                    out.append(StopFollowing())
                self.followed = want
                if want is not None:
                    out.append(StartFollowing(want[0], want[1]))
        return out

    def _on_durable(self, ev: Durable) -> list[Effect]:
        self.durable = ev.offset
        return self._advance()

    def _on_follower_call(self, ev: FollowerCall) -> list[Effect]:
        if ev.follower not in self.replicas or ev.follower == self.me:
            return [Refuse("notFound", f"SPU {ev.follower} is not a follower of {self.name} (replicas "
                                       f"{list(self.replicas)})")]
        if ev.epoch > self.epoch:
            # The follower has heard of a newer epoch than ours: we are a deposed leader.
            out: list[Effect] = []
            if not self.fenced:
                out.append(Fence("epoch", f"a follower (SPU {ev.follower}) is at epoch {ev.epoch}, past ours "
                                          f"{self.epoch}"))
            self.fenced_epoch = self.epoch
            return out + [Refuse("notLeader", f"{self.name}: SPU {self.me} is at epoch {self.epoch}, the follower "
                                              f"at {ev.epoch}")]
        if ev.epoch < self.epoch or self.led_epoch != self.epoch:
            return [Refuse("staleEpoch", f"{self.name}: the leader is at epoch {self.epoch}, the follower asked "
                                         f"at {ev.epoch}")]
        return []

    def _on_follower_fetched(self, ev: FollowerFetched) -> list[Effect]:
        self.durable = ev.durable
        if not (self.is_leader and self.led_epoch == self.epoch):
            return []
        p = self.progress.get(ev.follower)
        if p is None:
            if ev.follower not in self.replicas or ev.follower == self.me:
                return []
            p = self.progress[ev.follower] = FollowerProgress(None, 0)
        p.on_fetch(ev.offset, ev.leader_log_end, ev.now_ms)
        return self._advance()

    def _on_tick(self, ev: Tick) -> list[Effect]:
        if not self.leading or self.isr_in_flight is not None:
            return []
        me, lag, isr = self.me, self.lag_max_ms, self.isr
        # Only committed members are dropped. A follower whose addition was asked for keeps
        # counting, stalled or not, until the SC refuses that request or the metadata shows it
        # committed (then a stall drops it like any member): the SC may have committed the
        # addition unseen, and then it may be elected (tests/test_replica_state.py has the
        # history where dropping it at once let the high watermark pass it).
        drop = isr_shrink(me, isr, self.progress, ev.now_ms, lag)
        add = isr_expand(me, self.replicas, self.effective_isr(), self.progress, self.high_watermark,
                         self.epoch_start, ev.now_ms, lag)
        unconfirmed = self.pending_adds - set(isr)  # asked for before, no answer yet: ask again
        if not drop and not add and not unconfirmed:
            return []
        want = set(add) | unconfirmed
        new = tuple(r for r in self.replicas if (r in isr and r not in drop) or r in want)
        # An addition counts for the high watermark from now on (KIP-497).
        self.pending_adds |= set(add)
        request = RequestIsrChange(new, self.epoch, tuple(isr), frozenset(add))
        self.isr_in_flight = request
        return [request]

    def _on_isr_answer(self, ev: IsrChangeAnswered) -> list[Effect]:
        req = ev.request
        if self.isr_in_flight == req:
            self.isr_in_flight = None
        out: list[Effect] = []
        if ev.outcome == "stale":
            # The SC has moved on (a new leader or epoch): acknowledge nothing until the
            # metadata tells us our new role.
            self.pending_adds -= req.adds
            if self.epoch == req.epoch:
                if not self.fenced:
                    out.append(Fence("epoch", f"the SC refused in-sync set {list(req.isr)} at epoch {req.epoch}"))
                self.fenced_epoch = req.epoch
        elif ev.outcome == "conflict":
            # Computed from a set that changed meanwhile: not applied; the next round starts
            # from the set the metadata brings.
            self.pending_adds -= req.adds
        # committed: seen in the metadata soon; unknown: the additions keep counting and the
        # next round asks again.
        return out + self._advance()

    def _on_disk_fault(self, ev: DiskFault) -> list[Effect]:
        if self.failure is not None:
            return []
        self.failure = ev.reason
        out: list[Effect] = [Fence("disk", ev.reason)]
        if self.followed is not None:
            self.followed = None
            out.append(StopFollowing())
        return out

    def _on_leader_high_watermark(self, ev: LeaderHighWatermark) -> list[Effect]:
        if self.failure is not None or self.is_leader:
            return []
        target = min(ev.high_watermark, ev.log_end)
        if target > self.high_watermark:
            self.high_watermark = target
            return [AdvanceHighWatermark(target)]
        return []

    def may_truncate_acknowledged(self, latest_epoch: int) -> bool:
        """Whether this follower may cut below its high watermark: only when an operator's
        unclean election came after every batch it holds (docs/replication.md)."""
        unclean = self.last_unclean_epoch
        return self.truncate_acknowledged_for_tests or (unclean is not None and latest_epoch < unclean)

    def _on_diverged(self, ev: Diverged) -> list[Effect]:
        if self.failure is not None:
            return []
        target = max(ev.target, ev.log_start)
        if target >= ev.log_end:
            return []
        if target < self.high_watermark and not self.may_truncate_acknowledged(ev.latest_epoch):
            return [RefuseTruncation(ev.leader, ev.epoch, ev.log_end, target, self.high_watermark)]
        return [Truncate(target, ev.log_end, self.high_watermark)]

    def _on_leader_starts_past(self, ev: LeaderStartsPast) -> list[Effect]:
        if self.failure is not None or ev.leader_log_start <= ev.log_end:
            return []
        return [ResetLog(ev.leader_log_start)]

    def _on_log_cut(self, ev: LogCut) -> list[Effect]:
        self.high_watermark, self.durable = ev.high_watermark, ev.durable
        return []


_HANDLERS = {
    MetadataChanged: ReplicaState._on_metadata,
    Durable: ReplicaState._on_durable,
    FollowerCall: ReplicaState._on_follower_call,
    FollowerFetched: ReplicaState._on_follower_fetched,
    Tick: ReplicaState._on_tick,
    IsrChangeAnswered: ReplicaState._on_isr_answer,
    DiskFault: ReplicaState._on_disk_fault,
    LeaderHighWatermark: ReplicaState._on_leader_high_watermark,
    Diverged: ReplicaState._on_diverged,
    LeaderStartsPast: ReplicaState._on_leader_starts_past,
    LogCut: ReplicaState._on_log_cut,
}
