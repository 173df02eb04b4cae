"""The group consumer's pure decisions: its options, where a new partition starts, what a
commit carries, and the assignment change it reports (core/client/group_consumer.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ..groups.names import ASSIGNORS, OFFSETS_TOPIC, GroupNameError, TopicPartition, check_group
from ..protocol import limits as L
from ..protocol.errors import InvalidRequestError
from ..protocol.offset_range import readable
from .consumer import Offset

AUTO_COMMIT_INTERVAL_MS_MAX = 3_600_000


@dataclass(frozen=True)
class AssignmentChange:
    """One change of what the consumer holds: ``kind`` is "assigned", "revoked" (handed back,
    positions committed first) or "lost" (taken away without a commit: the member was removed)."""

    kind: str
    partitions: frozenset[TopicPartition]
    generation: int


PAST_END_WAIT_S = 10.0  # how long a committed offset past the partition's end is asked about again


def start_offset(committed: int | None, log_start: int, high_watermark: int, log_end: int,
                 start: str, waited_s: float = 0.0) -> tuple[int | None, bool]:
    """Where a newly assigned partition is read from. Pure.

    - its committed offset when there is one in ``[log_start, log_end]``;
    - below the log start (retention deleted those records): ``start`` ("beginning": the log
      start, "end": the high watermark), and the bool says so (the caller warns);
    - past the log end: None ("ask again") for PAST_END_WAIT_S: the SPU that answered holds less
      than the group already read, so it is a deposed leader still answering or metadata that
      lags; restarting at ``start`` would move the group's position backwards. After that wait
      the partition really lost records (an unclean election): the high watermark, never a
      re-read of everything (the bool says so);
    - no commit: ``start``."""
    if committed is not None and readable(committed, log_start, log_end):
        return committed, False
    if committed is not None and committed > log_end:
        return (None, False) if waited_s < PAST_END_WAIT_S else (high_watermark, True)
    return (log_start if start == "beginning" else high_watermark), committed is not None


class Positions:
    """Where the application is in each partition: the offset after the last record handed to
    it. ``done`` holds the partitions whose pushes were handed out whole; a record iterator
    going through one push ``hold``s it and counts what it yielded in ``n`` (one increment per
    record: the only per-record cost of a group), so a ``commit()`` inside the loop's body
    includes exactly the records handed out so far."""

    __slots__ = ("done", "in_hand", "n")

    def __init__(self) -> None:
        self.done: dict[int, int] = {}
        self.in_hand: tuple[int, list[Any]] | None = None
        self.n = 0

    def hold(self, partition: int, records: list[Any]) -> None:
        self.in_hand, self.n = (partition, records), 0

    def finish(self, partition: int, end: int) -> None:
        self.in_hand = None
        self.done[partition] = end

    def now(self) -> dict[int, int]:
        out = dict(self.done)
        if self.in_hand is not None and self.n:
            p, records = self.in_hand
            out[p] = records[self.n - 1].offset + 1
        return out


def to_commit(positions: Mapping[int, int], committed: Mapping[int, int]) -> dict[int, int]:
    """The positions that moved since the last successful commit. Pure."""
    return {p: o for p, o in positions.items() if committed.get(p) != o}


def check_options(group: Any, start: Offset | None, assignor: str, session_timeout_ms: int,
                  rebalance_timeout_ms: int, auto_commit_interval_ms: int, group_instance_id: str | None,
                  partition: int | None, topic: str = "") -> str:
    """The group name after the construction checks; InvalidRequestError naming the first
    problem."""
    if partition is not None:
        raise InvalidRequestError("partition= and group= exclude each other: the group's coordinator assigns the "
                                  "partitions")
    if topic == OFFSETS_TOPIC:
        raise InvalidRequestError(f"{OFFSETS_TOPIC} is internal: a group cannot subscribe to it (read it with a plain "
                                  "consumer)")
    try:
        check_group(group)
    except GroupNameError as e:
        raise InvalidRequestError(str(e)) from None
    if start is not None and (not isinstance(start, Offset) or start.kind not in ("beginning", "end")):
        raise InvalidRequestError(f"a group consumer starts a partition without a commit at Offset.beginning() or "
                                  f"Offset.end(), not {start!r:.100}")
    if assignor not in ASSIGNORS:
        raise InvalidRequestError(f"unknown assignor {assignor!r:.100}: use one of {', '.join(ASSIGNORS)}")
    for name, value, lo, hi in (("session_timeout_ms", session_timeout_ms, L.SESSION_TIMEOUT_MS_MIN,
                                 L.SESSION_TIMEOUT_MS_MAX),
                                ("rebalance_timeout_ms", rebalance_timeout_ms, L.REBALANCE_TIMEOUT_MS_MIN,
                                 L.REBALANCE_TIMEOUT_MS_MAX),
                                ("auto_commit_interval_ms", auto_commit_interval_ms, 1, AUTO_COMMIT_INTERVAL_MS_MAX)):
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
            raise InvalidRequestError(f"{name} must be {lo}-{hi}, not {value!r:.100}")
    if group_instance_id is not None and (not isinstance(group_instance_id, str) or not group_instance_id
                                          or len(group_instance_id) > L.INSTANCE_ID_CHARS_MAX):
        raise InvalidRequestError(f"group_instance_id must be 1-{L.INSTANCE_ID_CHARS_MAX} characters, not "
                                  f"{group_instance_id!r:.100}")
    return group
