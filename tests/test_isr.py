"""The leader's follower bookkeeping as pure functions (core/spu/isr.py): the high watermark over
the in-sync set, and when to ask the SC to shrink or grow the set."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kolk.spu.isr import FollowerProgress, effective_isr, high_watermark, isr_expand, isr_shrink

ME = 1


def test_high_watermark_is_the_smallest_durable_end_over_the_set() -> None:
    progress = {2: FollowerProgress(40, 0), 3: FollowerProgress(25, 0)}
    assert high_watermark(ME, 50, [1, 2, 3], progress) == 25
    assert high_watermark(ME, 50, [1, 2], progress) == 40  # 3 left the set: it no longer holds the mark
    assert high_watermark(ME, 30, [1, 2], progress) == 30  # the leader's own fsynced end counts too


def test_a_member_that_has_not_fetched_holds_the_mark() -> None:
    """After an election nobody's progress is known; the mark waits for every member."""
    progress = {2: FollowerProgress(None, 0), 3: FollowerProgress(25, 0)}
    assert high_watermark(ME, 50, [1, 2, 3], progress) == 0
    assert high_watermark(ME, 50, [1, 3], progress) == 25


@given(st.integers(0, 1000), st.dictionaries(st.integers(2, 6), st.integers(0, 1000), max_size=5), st.data())
def test_high_watermark_never_passes_a_member(own: int, leos: dict[int, int], data: st.DataObject) -> None:
    """Whatever the set, no member lacks an offset below the mark: an acknowledged write is
    on every replica that can be elected."""
    members = data.draw(st.lists(st.sampled_from(sorted(leos)), unique=True)) if leos else []
    progress = {r: FollowerProgress(leo, 0) for r, leo in leos.items()}
    hw = high_watermark(ME, own, [ME, *members], progress)
    assert hw <= own and all(hw <= leos[m] for m in members)


def test_pending_additions_count_before_the_sc_confirms_them() -> None:
    """KIP-497: once asked, an added follower may be elected as soon as the SC commits, so the
    leader counts it at once; a removal counts only once committed."""
    assert effective_isr([1, 2], {3}) == [1, 2, 3]
    assert effective_isr([1, 2], {2}) == [1, 2]


def test_caught_up_means_reaching_the_end_seen_at_the_previous_fetch() -> None:
    """Under steady load a follower never equals the moving end; it is caught up when it has
    reached where the leader's log ended at its previous fetch."""
    p = FollowerProgress(None, 0)
    p.on_fetch(0, 100, now_ms=10)  # first fetch: nothing asked of it yet
    assert p.caught_up_ms == 10
    p.on_fetch(100, 180, now_ms=20)  # reached 100, the end at its previous fetch
    assert p.caught_up_ms == 20
    p.on_fetch(150, 260, now_ms=30)  # short of 180: not caught up
    assert p.caught_up_ms == 20 and p.leo == 150


def test_shrink_drops_followers_not_caught_up_for_the_lag_bound() -> None:
    progress = {2: FollowerProgress(90, caught_up_ms=1_000), 3: FollowerProgress(100, caught_up_ms=9_500)}
    assert isr_shrink(ME, [1, 2, 3], progress, now_ms=10_000, lag_max_ms=5_000) == [2]
    assert isr_shrink(ME, [1, 3], progress, now_ms=10_000, lag_max_ms=5_000) == []


def test_expand_needs_the_high_watermark_and_the_epoch_start() -> None:
    """A follower rejoins only past the high watermark and past where this leader's epoch
    began (so it has truncated any divergent tail first)."""
    progress = {2: FollowerProgress(100, caught_up_ms=9_900), 3: FollowerProgress(80, caught_up_ms=9_900)}
    assert isr_expand(ME, [1, 2, 3], [1], progress, high_watermark_=90, epoch_start=50, now_ms=10_000,
                      lag_max_ms=5_000) == [2]
    assert isr_expand(ME, [1, 2, 3], [1], progress, high_watermark_=90, epoch_start=120, now_ms=10_000,
                      lag_max_ms=5_000) == []
    stale = {2: FollowerProgress(100, caught_up_ms=1_000)}
    assert isr_expand(ME, [1, 2], [1], stale, high_watermark_=90, epoch_start=0, now_ms=10_000,
                      lag_max_ms=5_000) == []
