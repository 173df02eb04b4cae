"""The leader-epoch history (segments/leader_epochs.py) against a brute-force model.

The model keeps, for every offset written, the epoch of its leader; the answers of the
history must equal what that per-offset table says (Kafka KIP-101/279 semantics)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kolk.segments.leader_epochs import UNDEFINED_EPOCH, UNDEFINED_OFFSET, EpochEntry, LeaderEpochHistory


def test_end_offset_examples() -> None:
    """Epoch 0 wrote [0, 10), epoch 3 wrote [10, 25), epoch 7 writes from 25 on."""
    h = LeaderEpochHistory()
    assert h.assign(0, 0) and h.assign(3, 10) and h.assign(7, 25)
    assert h.end_offset_for(0, 40) == (0, 10)
    assert h.end_offset_for(2, 40) == (0, 10)  # an epoch this log never saw: the one before it
    assert h.end_offset_for(3, 40) == (3, 25)
    assert h.end_offset_for(7, 40) == (7, 40)  # the latest epoch ends at the log end
    assert h.end_offset_for(9, 40) == (7, 40)
    h2 = LeaderEpochHistory([EpochEntry(5, 100)])
    assert h2.end_offset_for(4, 200) == (UNDEFINED_EPOCH, UNDEFINED_OFFSET)


def test_assign_refuses_an_older_epoch_and_replaces_an_empty_one() -> None:
    """A stale leader's epoch is an error; an epoch that wrote nothing is replaced."""
    h = LeaderEpochHistory()
    h.assign(2, 0)
    assert h.assign(2, 5) is False
    with pytest.raises(ValueError, match="older than the latest epoch 2"):
        h.assign(1, 5)
    h.assign(4, 0)  # epoch 2 wrote nothing
    assert h.entries == [EpochEntry(4, 0)]
    with pytest.raises(ValueError, match="negative"):
        h.assign(-1, 0)


def test_truncate_from_start_moves_the_spanning_epoch() -> None:
    """Retention moved the log start to 15: epoch 0 is gone, epoch 3 now starts at 15."""
    h = LeaderEpochHistory([EpochEntry(0, 0), EpochEntry(3, 10), EpochEntry(7, 25)])
    removed, moved = h.truncate_from_start(15)
    assert removed == [EpochEntry(0, 0), EpochEntry(3, 10)]
    assert moved == EpochEntry(3, 15)
    assert h.entries == [EpochEntry(3, 15), EpochEntry(7, 25)]


@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 5)), min_size=1, max_size=12),
    st.integers(0, 40),
    st.integers(0, 30),
)
def test_history_matches_per_offset_model(steps: list[tuple[int, int]], query: int, cut: int) -> None:
    """Appending runs of records under growing epochs, then truncating the end, the history
    answers end_offset_for exactly as a per-offset epoch table does."""
    h = LeaderEpochHistory()
    epochs_by_offset: list[int] = []
    epoch = 0
    for bump, count in steps:
        epoch += bump
        h.assign(epoch, len(epochs_by_offset))
        epochs_by_offset.extend([epoch] * count)
    cut = min(cut, len(epochs_by_offset))
    h.truncate_from_end(cut)
    epochs_by_offset = epochs_by_offset[:cut]
    leo = len(epochs_by_offset)

    older = [e for e in epochs_by_offset if e <= query]
    if not older:
        expected = (UNDEFINED_EPOCH, UNDEFINED_OFFSET)
    else:
        found = max(older)
        later = [i for i, e in enumerate(epochs_by_offset) if e > found]
        expected = (found, later[0] if later else leo)
    assert h.end_offset_for(query, leo) == expected
