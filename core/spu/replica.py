"""One partition replica on an SPU: its log, what the SC says about it, and its role state.

The SC decides who leads (``status.leader``) at which epoch and which replicas are in sync;
the replica follows that. Its protocol state (the metadata's view, the leader's follower
progress and in-sync requests, the fences, the follower role, the high watermark) has one
owner, the pure state machine :class:`~kolk.spu.replica_state.ReplicaState`: the SPU feeds
it events and carries out the effects it returns (``SpuServer.step``); nothing else writes
that state. This object holds the edges: the log, the group commit, the producer table (both
roles keep it current, so a follower that becomes leader already knows every producer's last
sequences), the raw metadata object, the tasks and the event that wakes waiters.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..segments import GroupCommit, PartitionLog
from ..segments.producer_state import ProducerStateTable
from .isr import FollowerProgress
from .metrics import Traffic
from .replica_state import ReplicaState


class Replica:
    def __init__(self, name: str, log_: PartitionLog, spu_id: int, lag_max_ms: int = 10_000,
                 truncate_acknowledged_for_tests: bool = False) -> None:
        self.name = name
        self.log = log_
        self.spu_id = spu_id
        self.group = GroupCommit(log_)
        self.meta: dict[str, Any] = {}  # the SC's partition object, as the metadata brought it
        self.changed = asyncio.Event()
        self.producers = ProducerStateTable.rebuild(log_.batch_headers())
        self.state = ReplicaState(spu_id, lag_max_ms, name=name, high_watermark=log_.high_watermark,
                                  durable=log_.durable_offset,
                                  truncate_acknowledged_for_tests=truncate_acknowledged_for_tests)
        self.isr_request: asyncio.Task[Any] | None = None  # the in-sync request the state has in flight
        self.follower_task: asyncio.Task[Any] | None = None
        self.incarnation = 0  # the partition's spec.incarnation this log was made for
        self.traffic = Traffic()  # client records and bytes in and out, for /metrics (core/spu/metrics.py)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    # ---------------------------------------------------------------- the state, read-only

    @property
    def leader(self) -> int | None:
        return self.state.leader

    @property
    def epoch(self) -> int:
        return self.state.epoch

    @property
    def replicas(self) -> list[int]:
        return list(self.state.replicas)

    @property
    def isr(self) -> list[int]:
        return list(self.state.isr)

    @property
    def is_leader(self) -> bool:
        return self.state.is_leader

    @property
    def fenced(self) -> bool:
        """It must acknowledge nothing: a newer leader exists, or its disk failed."""
        return self.state.fenced

    @property
    def failure(self) -> str | None:
        """Why the disk fenced this replica (core/spu/disk_faults.py); it serves nothing until rebuilt."""
        return self.state.failure

    @property
    def led_epoch(self) -> int | None:
        return self.state.led_epoch

    @property
    def epoch_start(self) -> int:
        return self.state.epoch_start

    @property
    def progress(self) -> dict[int, FollowerProgress]:
        return self.state.progress

    def effective_isr(self) -> list[int]:
        return self.state.effective_isr()

    def status_json(self, now_ms: int) -> dict[str, Any]:
        """What ``partitionStatus`` says of this replica (docs/protocol.md)."""
        lg = self.log
        followers = {}
        for r, p in sorted(self.progress.items()):
            followers[str(r)] = {
                "leo": p.leo, "lag": None if p.leo is None else lg.log_end_offset - p.leo,
                "last_fetch_ms_ago": None if p.last_fetch_ms is None else now_ms - p.last_fetch_ms}
        role = "leader" if self.is_leader else "follower" if self.leader is not None else "none"
        closed = lg.closed or lg.failure is not None
        return {"partition": self.name, "spu": self.spu_id, "role": role, "leader": self.leader,
                "epoch": self.epoch, "isr": self.isr,
                "high_watermark": lg.high_watermark, "log_end_offset": None if closed else lg.log_end_offset,
                "log_start_offset": lg.log_start_offset, "size_bytes": None if closed else lg.size_bytes,
                "segments": None if closed else lg.segment_count, "cleaned_offset": lg.cleaned_offset,
                "fenced": self.fenced, "failure": self.failure, "followers": followers if self.is_leader else {}}
