"""The follower's divergence search (core/spu/follower.py) against a leader whose answers come
from a real PartitionLog: several rounds when the follower lacks the leader's epoch (KIP-279).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from kolk.spu.follower import TruncationRefused, _truncate_divergent
from kolk.spu.replica_state import ReplicaState
from kolk.segments import LogStore, build_batch


def write(lg: Any, epochs: list[tuple[int, int]]) -> None:
    """Append one-record batches: ``(epoch, count)`` runs, as a leader of that epoch would."""
    for epoch, count in epochs:
        for _ in range(count):
            lg.append(build_batch([(None, b"e%d" % epoch)]), leader_epoch=epoch)
    lg.sync()


class LeaderStub:
    """A connection to a leader that answers epochEndOffset from a real log, as
    ReplicationCalls.epochEndOffset does."""

    def __init__(self, lg: Any) -> None:
        self.lg = lg
        self.asked: list[int] = []

    async def call(self, name: str, timeout_s: float, **fields: Any) -> Any:
        assert name == "epochEndOffset", name
        self.asked.append(fields["lastEpoch"])
        end = self.lg.end_offset_for_epoch(fields["lastEpoch"])
        return SimpleNamespace(result=SimpleNamespace(ok=True), leaderEpoch=end.epoch, endOffset=end.end_offset)


def run_truncation(tmp_path: Any, leader_epochs: list, follower_epochs: list, follower_hw: int = 0,
                   last_unclean_epoch: int | None = None) -> tuple[int, list[int]]:
    with LogStore(str(tmp_path / "leader")) as ls, LogStore(str(tmp_path / "follower")) as fs:
        leader, follower = ls.open_log("t-0"), fs.open_log("t-0")
        write(leader, leader_epochs)
        write(follower, follower_epochs)
        follower.set_high_watermark(follower_hw)
        stub = LeaderStub(leader)
        status = {} if last_unclean_epoch is None else {"last_unclean_epoch": last_unclean_epoch}

        async def body() -> None:
            # The replica's state decides the cuts (core/spu/replica_state.py); the server
            # only feeds it (SpuServer.step: the truncation path has no effect for it to carry out).
            state = ReplicaState(3, 10_000, name="t-0", high_watermark=follower.high_watermark,
                                 durable=follower.durable_offset, leader=1, epoch=9,
                                 last_unclean_epoch=status.get("last_unclean_epoch"))
            replica = SimpleNamespace(name="t-0", log=follower, producers=None, wake=lambda: None,
                                      meta={"status": status}, state=state)
            replica.follower_task = asyncio.current_task()
            # No producer state saved by a cleaner (core/spu/replica_store.py): the index has none.
            server = SimpleNamespace(config=SimpleNamespace(spu_id=3, ignore_storage_id_for_tests=False),
                                     step=lambda r, event: r.state.step(event),
                                     store=SimpleNamespace(index=SimpleNamespace(get=lambda cf, key: None)))
            await _truncate_divergent(stub, server, replica, 1, 9, 5.0, asyncio.current_task())
        asyncio.run(body())
        return follower.log_end_offset, stub.asked


def test_follower_lacking_the_leaders_epoch_asks_again(tmp_path: Any) -> None:
    """Leader: epoch 0 [0,8), 1 [8,12), 3 from 12. Follower: epoch 0 [0,10), 2 from 10. One
    round would stop at 10 and keep two records epoch 1 replaced; the second round (asking
    for epoch 0) cuts at 8, where the logs really diverge."""
    end, asked = run_truncation(tmp_path, [(0, 8), (1, 4), (3, 3)], [(0, 10), (2, 5)])
    assert end == 8 and asked == [2, 0]


def test_follower_with_a_matching_epoch_cuts_once(tmp_path: Any) -> None:
    end, asked = run_truncation(tmp_path, [(0, 5), (2, 5)], [(0, 7)])
    assert end == 5 and asked == [0]


def test_follower_behind_the_leader_keeps_everything(tmp_path: Any) -> None:
    end, asked = run_truncation(tmp_path, [(0, 5), (1, 5)], [(0, 3)])
    assert end == 3 and asked == [0]


def test_follower_refuses_to_truncate_below_its_high_watermark(tmp_path: Any) -> None:
    """Issue 15: a leader that lost its disk (empty, or short) would have the follower cut
    acknowledged records; the follower refuses (the SPU then reports the leader to the SC)."""
    with pytest.raises(TruncationRefused, match="below its high watermark 7"):
        run_truncation(tmp_path, [(0, 3)], [(0, 10)], follower_hw=7)


def test_follower_refuses_an_empty_leader(tmp_path: Any) -> None:
    with pytest.raises(TruncationRefused, match="cut its log from 10 to 0"):
        run_truncation(tmp_path, [], [(0, 10)], follower_hw=10)


def test_follower_cuts_above_its_high_watermark(tmp_path: Any) -> None:
    """Above the high watermark the tail was never acknowledged: cut as before."""
    end, _ = run_truncation(tmp_path, [(0, 5), (2, 5)], [(0, 7)], follower_hw=5)
    assert end == 5


def test_an_unclean_election_after_the_followers_data_allows_the_cut(tmp_path: Any) -> None:
    """An operator's unclean election (epoch 4) came after every batch the follower holds
    (epoch 0): those records were given up; the follower truncates to the new leader."""
    end, _ = run_truncation(tmp_path, [(0, 3), (4, 2)], [(0, 10)], follower_hw=10, last_unclean_epoch=4)
    assert end == 3


def test_an_older_unclean_election_does_not_allow_the_cut(tmp_path: Any) -> None:
    """The follower's batches (epoch 5) come after the unclean election (epoch 4): its high
    watermark is the new leader's promise, so a leader short of it lost data."""
    with pytest.raises(TruncationRefused):
        run_truncation(tmp_path, [(0, 3), (5, 1)], [(0, 3), (5, 6)], follower_hw=8, last_unclean_epoch=4)
