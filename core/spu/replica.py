"""One partition replica on an SPU: its log, what the SC says about it, and its role state.

The SC decides who leads (``status.leader``) at which epoch and which replicas are in sync;
the replica follows that. As leader it tracks each follower's progress and moves the high
watermark over the in-sync set (core/spu/isr.py); as follower a task pulls from the leader
(core/spu/follower.py). Both roles keep the idempotent-producer table current, so a follower that
becomes leader already knows every producer's last sequences.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..segments import GroupCommit, PartitionLog
from ..segments.producer_state import ProducerStateTable
from .isr import FollowerProgress, effective_isr, high_watermark


class Replica:
    def __init__(self, name: str, log_: PartitionLog, spu_id: int) -> None:
        self.name = name
        self.log = log_
        self.spu_id = spu_id
        self.group = GroupCommit(log_)
        self.meta: dict[str, Any] = {}
        self.changed = asyncio.Event()
        self.producers = ProducerStateTable.rebuild(log_.batch_headers())
        # Leader role, valid for ``led_epoch`` only.
        self.led_epoch: int | None = None
        self.epoch_start = 0  # the log end when this leader took over
        self.progress: dict[int, FollowerProgress] = {}
        self.pending_adds: set[int] = set()
        self.isr_request: asyncio.Task[Any] | None = None
        # An epoch this SPU learned is stale (from a follower, or the SC refusing an ISR change)
        # before the metadata caught up: while ``epoch == fenced_epoch`` it acknowledges nothing.
        self.fenced_epoch: int | None = None
        # Why the disk fenced this replica (core/spu/disk_faults.py); it serves nothing until rebuilt.
        self.failure: str | None = None
        # Follower role.
        self.follower_task: asyncio.Task[Any] | None = None
        self.followed: tuple[int | None, int] | None = None  # (leader, epoch) the task follows

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    # ---------------------------------------------------------------- metadata

    @property
    def leader(self) -> int | None:
        return self.meta.get("status", {}).get("leader")

    @property
    def epoch(self) -> int:
        return int(self.meta.get("status", {}).get("epoch", 0))

    @property
    def replicas(self) -> list[int]:
        return list(self.meta.get("spec", {}).get("replicas", []))

    @property
    def isr(self) -> list[int]:
        return list(self.meta.get("status", {}).get("isr", []))

    @property
    def is_leader(self) -> bool:
        return self.leader == self.spu_id

    @property
    def fenced(self) -> bool:
        """It must acknowledge nothing: a newer leader exists, or its disk failed."""
        return self.failure is not None or (self.fenced_epoch is not None and self.fenced_epoch >= self.epoch)

    # ---------------------------------------------------------------- leader role

    def become_leader(self, now_ms: int) -> None:
        """Start leading at the current epoch: every follower's progress is unknown again."""
        self.led_epoch = self.epoch
        self.epoch_start = self.log.log_end_offset
        self.progress = {r: FollowerProgress(None, now_ms) for r in self.replicas if r != self.spu_id}
        self.pending_adds.clear()

    def on_metadata(self) -> None:
        """Keep the leader state in step with the replica list and the committed set."""
        for r in self.replicas:
            if r != self.spu_id and r not in self.progress:
                self.progress[r] = FollowerProgress(None, 0)
        for r in [r for r in self.progress if r not in self.replicas]:
            del self.progress[r]
        self.pending_adds -= set(self.isr)
        self.pending_adds &= set(self.replicas)

    def effective_isr(self) -> list[int]:
        return effective_isr(self.isr, self.pending_adds)

    def advance_high_watermark(self) -> bool:
        """Move the high watermark as far as the in-sync set allows; True if it moved."""
        lg = self.log
        if self.is_leader and self.led_epoch == self.epoch and self.failure is None:
            target = high_watermark(self.spu_id, lg.durable_offset, self.effective_isr(), self.progress)
        else:
            return False
        target = min(target, lg.log_end_offset)
        if target > lg.high_watermark:
            lg.set_high_watermark(target)
            return True
        return False

    def status_json(self, now_ms: int) -> dict[str, Any]:
        lg = self.log
        followers = {}
        for r, p in sorted(self.progress.items()):
            followers[str(r)] = {
                "leo": p.leo, "lag": None if p.leo is None else lg.log_end_offset - p.leo,
                "last_fetch_ms_ago": None if p.last_fetch_ms is None else now_ms - p.last_fetch_ms}
        return {"partition": self.name, "leader": self.leader, "epoch": self.epoch, "isr": self.isr,
                "high_watermark": lg.high_watermark, "log_end_offset": lg.log_end_offset,
                "log_start_offset": lg.log_start_offset, "fenced": self.fenced, "failure": self.failure,
                "followers": followers}
