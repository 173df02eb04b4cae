"""The leader-epoch history of a partition: which epoch's leader wrote from which offset.

A list of ``(epoch, start_offset)`` with both strictly increasing. It answers the question a
rejoining replica asks the leader, "where did my last epoch end?" (Kafka KIP-101, KIP-279):
:meth:`LeaderEpochHistory.end_offset_for`. Every batch header carries its epoch, so this
history is rebuildable from the log; it is kept in RocksDB (``leader_epochs``) so that the
question is answered without a scan.

This class is pure: it holds the list and says what changed; the partition log persists.
"""

from __future__ import annotations

from typing import NamedTuple

UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1


class EpochEntry(NamedTuple):
    epoch: int
    start_offset: int


class EpochEnd(NamedTuple):
    """The answer to "where did epoch E end?": the largest epoch <= E and its end offset."""

    epoch: int
    end_offset: int


class LeaderEpochHistory:
    def __init__(self, entries: list[EpochEntry] | None = None) -> None:
        self._entries: list[EpochEntry] = list(entries or [])

    @property
    def entries(self) -> list[EpochEntry]:
        return list(self._entries)

    @property
    def latest_epoch(self) -> int:
        return self._entries[-1].epoch if self._entries else UNDEFINED_EPOCH

    def assign(self, epoch: int, start_offset: int) -> bool:
        """Record that ``epoch`` starts at ``start_offset``. Returns True if the list changed.

        An epoch already latest is a no-op; an older epoch is an error (a stale leader).
        """
        if epoch < 0:
            raise ValueError(f"leader epoch {epoch} is negative")
        if self._entries:
            last = self._entries[-1]
            if epoch == last.epoch:
                return False
            if epoch < last.epoch:
                raise ValueError(
                    f"leader epoch {epoch} is older than the latest epoch {last.epoch} of this log"
                )
            if start_offset < last.start_offset:
                raise ValueError(
                    f"epoch {epoch} would start at {start_offset}, before epoch {last.epoch} "
                    f"started ({last.start_offset})"
                )
            if start_offset == last.start_offset:
                # The previous epoch wrote nothing: it is replaced, as in Kafka.
                self._entries.pop()
        self._entries.append(EpochEntry(epoch, start_offset))
        return True

    def end_offset_for(self, epoch: int, log_end_offset: int) -> EpochEnd:
        """The largest epoch <= ``epoch`` and the offset where it ended.

        The latest epoch ends at the log end offset; an epoch older than the whole history
        gives ``(UNDEFINED_EPOCH, UNDEFINED_OFFSET)``.
        """
        found = None
        for i, entry in enumerate(self._entries):
            if entry.epoch > epoch:
                break
            found = i
        if found is None:
            return EpochEnd(UNDEFINED_EPOCH, UNDEFINED_OFFSET)
        if found == len(self._entries) - 1:
            return EpochEnd(self._entries[found].epoch, log_end_offset)
        return EpochEnd(self._entries[found].epoch, self._entries[found + 1].start_offset)

    def truncate_from_end(self, end_offset: int) -> list[EpochEntry]:
        """Drop epochs that start at or after ``end_offset`` (the log was cut there)."""
        removed = [e for e in self._entries if e.start_offset >= end_offset]
        self._entries = [e for e in self._entries if e.start_offset < end_offset]
        return removed

    def truncate_from_start(self, start_offset: int) -> tuple[list[EpochEntry], EpochEntry | None]:
        """The log now starts at ``start_offset``: drop epochs wholly before it and move the
        start of the one that spans it. Returns the removed entries and the moved one."""
        removed: list[EpochEntry] = []
        while len(self._entries) > 1 and self._entries[1].start_offset <= start_offset:
            removed.append(self._entries.pop(0))
        moved = None
        if self._entries and self._entries[0].start_offset < start_offset:
            removed.append(self._entries[0])
            moved = EpochEntry(self._entries[0].epoch, start_offset)
            self._entries[0] = moved
        return removed, moved
