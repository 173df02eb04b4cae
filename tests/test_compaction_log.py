"""The cleaner on a real log (segments/cleaner.py, clean_exec.py, clean_worker.py).

Passes through the worker process and in process, a key map at its cap, the lag, the high
watermark, tombstones, erasure, what a rewritten batch keeps of its header, stale plans, and
a crash (a live copy of the data directory: what kill -9 leaves) at every step of the swap.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

from crash_copy import copy_live_directory
from kolk.segments import CODEC_GZIP, CODEC_ZSTD, LogConfig, LogStore, SegmentDeletedError, build_batch
from kolk.segments import cleaner
from kolk.segments.batch import iter_batches, validate_batch
from kolk.segments.clean_exec import execute_plan
from kolk.segments.clean_plan import CleanError, CleanPlan, CleanResult, StaleCleanError
from kolk.segments.cleaner import run_plan_in_process
from kolk.segments.compaction import KEY_MAP_BYTES_MIN, KEY_MAP_ENTRY_BYTES, CompactionPolicy, EraseSpec
from kolk.segments.records import decode_records

NOW = 1_700_000_000_000
CONFIG = LogConfig(segment_bytes=4096, batch_bytes_max=2048, append_bytes_max=8192, read_bytes_max=1 << 20,
                   scan_window_bytes=2048)


def policy(keys: int = 10_000, **kw) -> CompactionPolicy:
    args = dict(delete_retention_ms=0, min_compaction_lag_ms=0, key_map_bytes=max(KEY_MAP_BYTES_MIN, keys * KEY_MAP_ENTRY_BYTES))
    args.update(kw)
    return CompactionPolicy(**args)


def records(log) -> list[tuple[int, bytes | None, bytes | None]]:
    out, offset = [], log.log_start_offset
    while offset < log.log_end_offset:
        r = log.read(offset, 1 << 20)
        if not r.data:
            break
        for pos, _ in iter_batches(r.data, 1 << 20):
            out.extend((x.offset, x.key, x.value) for x in decode_records(r.data, pos))
        offset = r.next_offset
    return out


def newest_per_key(recs) -> dict:
    view = {}
    for o, k, v in recs:
        view[k] = (o, v)
    return view


def fill(log, n: int, keys: int, *, ts: int = NOW, per_batch: int = 5, tombstone_every: int = 0) -> None:
    i = 0
    while i < n:
        recs = []
        for j in range(i, min(n, i + per_batch)):
            value = None if tombstone_every and j % tombstone_every == 0 else b"value-%d" % j
            recs.append((b"key-%d" % (j % keys), value))
        log.append(build_batch(recs, first_timestamp=ts))
        i += per_batch
    log.roll()
    log.set_high_watermark(log.log_end_offset)


@pytest.fixture
def store(tmp_path):
    s = LogStore(str(tmp_path / "data"), clock=lambda: NOW)
    yield s
    s.close(sync=False)


def clean_until_done(log, pol, now, passes_max=200) -> int:
    passes = 0
    while True:
        plan = log.plan_clean(pol, now)
        if plan is None:
            return passes
        log.finish_clean(plan, execute_plan(plan))
        passes += 1
        assert passes < passes_max


def test_a_pass_through_the_worker_process_keeps_the_newest_per_key(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 300, 20)
    before = records(log)
    plan = log.plan_clean(policy(), NOW)
    assert plan is not None and CleanPlan.from_json(plan.to_json()) == plan
    result = run_plan_in_process(plan, timeout_s=60)
    stats = log.finish_clean(plan, result)
    after = records(log)
    assert stats.records_removed == 280 and len(after) == 20
    assert newest_per_key(after) == newest_per_key(before)
    assert log.cleaned_offset == 300
    assert not [f for f in os.listdir(log.directory) if f.endswith(".cleaned")]
    assert log.plan_clean(policy(), NOW) is None  # nothing dirty, no tombstone due


def test_key_map_at_its_cap_cleans_over_several_passes(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 400, 150)
    before = records(log)
    pol = policy(keys=64)
    plan = log.plan_clean(pol, NOW)
    stats = log.finish_clean(plan, execute_plan(plan))
    assert stats.keys_in_map == 64 and stats.cleaned_offset == 64  # the map ended inside a segment
    passes = clean_until_done(log, pol, NOW)
    assert passes >= 2
    after = records(log)
    assert newest_per_key(after) == newest_per_key(before) and len(after) == 150
    assert log.cleaned_offset == 400


def test_lag_high_watermark_and_active_segment_are_left_alone(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 100, 5, ts=NOW - 10_000)
    fill(log, 100, 5, ts=NOW)
    log.append(build_batch([(b"key-0", b"active")], first_timestamp=NOW - 10_000))
    log.set_high_watermark(log.log_end_offset)
    segs = log.segments()
    young = next(s.base_offset for s in segs if s.max_timestamp == NOW)
    clean_until_done(log, policy(min_compaction_lag_ms=5_000), NOW)
    kept = records(log)
    assert [o for o, _, _ in kept if o >= young] == list(range(young, 201))
    assert log.cleaned_offset == young
    # With the high watermark low, nothing past it is planned.
    log2 = store.open_log("p-1", CONFIG)
    fill(log2, 100, 5)
    log2.set_high_watermark(10)
    assert log2.plan_clean(policy(), NOW) is None


def test_tombstones_go_after_a_pass_and_delete_retention(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 50, 10)
    log.append(build_batch([(b"key-3", None)], first_timestamp=NOW))
    log.roll()
    log.set_high_watermark(log.log_end_offset)
    pol = policy(delete_retention_ms=1_000)
    clean_until_done(log, pol, NOW)
    assert (50, b"key-3", None) in records(log)  # kept for delete_retention_ms
    assert not any(k == b"key-3" and v is not None for _, k, v in records(log))
    assert log.plan_clean(pol, NOW + 999) is None
    clean_until_done(log, pol, NOW + 1_000)  # due: the stored deadline makes a pass
    assert not any(k == b"key-3" for _, k, _ in records(log))


def test_cleaned_offset_and_tombstone_deadline_survive_a_reopen(tmp_path):
    data = str(tmp_path / "data")
    s = LogStore(data, clock=lambda: NOW)
    log = s.open_log("p-0", CONFIG)
    fill(log, 40, 4, tombstone_every=39)
    clean_until_done(log, policy(delete_retention_ms=500), NOW)
    s.close()
    s = LogStore(data, clock=lambda: NOW)
    try:
        log = s.open_log("p-0", CONFIG)
        assert log.cleaned_offset == 40
        assert log.plan_clean(policy(delete_retention_ms=500), NOW) is None
        assert log.plan_clean(policy(delete_retention_ms=500), NOW + 500) is not None
    finally:
        s.close()


def test_erase_removes_the_key_ignoring_lag_and_delete_retention(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 60, 6, ts=NOW)
    log.append(build_batch([(b"key-2", None)], first_timestamp=NOW))
    upto = log.log_end_offset - 1
    log.roll()
    log.set_high_watermark(log.log_end_offset)
    digest = hashlib.sha256(b"key-2").digest()
    assert log.holds_key(digest, upto)
    pol = policy(min_compaction_lag_ms=10**9, delete_retention_ms=10**9)
    assert log.plan_clean(pol, NOW) is None  # the lag forbids ordinary cleaning
    stats = log.clean(pol, NOW, erase=EraseSpec(digest, upto))
    assert stats.records_erased == 11
    assert not log.holds_key(digest, upto)
    assert len(records(log)) == 50  # nothing else went: the lag still holds for other keys


def test_erase_of_a_key_that_never_existed_changes_nothing(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 20, 4)
    before = records(log)
    stats = log.clean(policy(min_compaction_lag_ms=10**9), NOW, erase=EraseSpec(hashlib.sha256(b"nobody").digest(), 19))
    assert stats.records_erased == 0 and stats.segments_swapped == 0 and records(log) == before


@pytest.mark.parametrize("codec", [CODEC_GZIP, CODEC_ZSTD])
def test_rewritten_batch_keeps_its_header(store, codec):
    log = store.open_log("p-0", CONFIG)
    log.append(build_batch([(b"a", b"1"), (b"b", b"1"), (b"a", b"2")], first_timestamp=NOW, codec=codec,
                           producer_id=42, producer_epoch=3, base_sequence=7), leader_epoch=5)
    log.roll()
    log.set_high_watermark(3)
    log.clean(policy(), NOW)
    data = log.read(0, 1 << 20).data
    (pos, h), = list(iter_batches(data, 1 << 20))
    validate_batch(data, pos, 1 << 20)
    assert (h.base_offset, h.last_offset_delta, h.record_count, h.codec) == (0, 2, 2, codec)
    assert (h.producer_id, h.producer_epoch, h.base_sequence, h.leader_epoch) == (42, 3, 7, 5)
    assert [(r.offset, r.key, r.value) for r in decode_records(data)] == [(1, b"b", b"1"), (2, b"a", b"2")]


def test_control_and_keyless_batches_stay(store):
    log = store.open_log("p-0", CONFIG)
    log.append(build_batch([(b"k", b"1")], first_timestamp=NOW, control=True))
    log.append(build_batch([(None, b"keyless")], first_timestamp=NOW))
    log.append(build_batch([(b"k", b"2")], first_timestamp=NOW))
    log.roll()
    log.set_high_watermark(3)
    log.clean(policy(), NOW)
    assert [o for o, _, _ in records(log)] == [0, 1, 2]


def test_stale_plans_are_refused_and_their_files_removed(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 200, 10)
    plan = log.plan_clean(policy(), NOW)
    result = execute_plan(plan)
    assert result.rewritten and all(os.path.exists(r.cleaned_path) for r in result.rewritten)
    log.truncate_to(log.log_end_offset - 1)
    with pytest.raises(StaleCleanError, match="truncated or reset since the plan"):
        log.finish_clean(plan, result)
    assert not [f for f in os.listdir(log.directory) if f.endswith(".cleaned")]


def test_a_plan_whose_segment_retention_deleted_is_refused(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 200, 10)
    plan = log.plan_clean(policy(), NOW)
    result = execute_plan(plan)
    log.advance_log_start(log.segments()[1].base_offset)
    with pytest.raises(StaleCleanError, match=r"segment 0 is gone"):
        log.finish_clean(plan, result)


def test_a_plan_for_a_closed_log_is_refused(tmp_path):
    s = LogStore(str(tmp_path / "data"), clock=lambda: NOW)
    log = s.open_log("p-0", CONFIG)
    fill(log, 100, 10)
    plan = log.plan_clean(policy(), NOW)
    result = execute_plan(plan)
    s.close()
    with pytest.raises(StaleCleanError, match="the log is closed"):
        cleaner.finish_clean(log, plan, result)
    assert not [f for f in os.listdir(log.directory) if f.endswith(".cleaned")]


def test_a_segment_changed_under_the_worker_fails_the_pass(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 100, 10)
    plan = log.plan_clean(policy(), NOW)
    with open(plan.segments[0].path, "ab") as f:
        f.write(b"x")
    with pytest.raises(CleanError, match="changed since the plan"):
        execute_plan(plan)
    assert not [f for f in os.listdir(log.directory) if f.endswith(".cleaned")]


def test_a_corrupt_batch_fails_the_pass_instead_of_getting_a_new_crc(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 100, 10)
    plan = log.plan_clean(policy(), NOW)
    with open(plan.segments[0].path, "r+b") as f:
        f.seek(70)
        byte = f.read(1)
        f.seek(70)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CleanError, match="CRC"):
        execute_plan(plan)


def test_worker_refuses_a_bad_plan_with_one_line():
    done = subprocess.run([sys.executable, "-m", "kolk.segments.clean_worker"], input=b"{not json",
                          capture_output=True, timeout=60)
    assert done.returncode == 2 and done.stdout == b""
    assert done.stderr.decode().count("\n") == 1 and "not a clean plan" in done.stderr.decode()


def test_worker_failure_reaches_the_caller_as_one_line(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 100, 10)
    plan = log.plan_clean(policy(), NOW)
    os.unlink(plan.segments[0].path)
    with pytest.raises(CleanError, match=r"the clean worker failed \(exit 1\): clean_worker: .*No such file"):
        run_plan_in_process(plan, timeout_s=60)


def test_throttle_holds_the_pass_to_its_rate(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 600, 30, per_batch=20)
    size = sum(s.size for s in log.segments())
    t0 = time.monotonic()
    log.clean(policy(bytes_per_s=size * 2), NOW)  # reads each byte about twice: map, then rewrite
    assert time.monotonic() - t0 >= 0.5


def test_a_region_of_a_replaced_segment_refuses_cleanly(store):
    log = store.open_log("p-0", CONFIG)
    fill(log, 100, 10)
    region = log.read(0, 1 << 20).regions[0]
    log.clean(policy(), NOW)
    with pytest.raises(SegmentDeletedError):
        region.read()


def test_clean_result_json_round_trip_and_bad_json():
    r = CleanResult(map_end=5)
    assert CleanResult.from_json(r.to_json()) == r
    with pytest.raises(ValueError, match="not a clean result"):
        CleanResult.from_json("{}")


# ---------------------------------------------------------------------------- crashes in the swap

STEPS = ["written", "intent", "renamed", "dir_synced", "reindexed", "done"]


def test_a_crash_at_every_step_of_the_swap_leaves_old_or_new_segments(tmp_path, monkeypatch):
    data = str(tmp_path / "data")
    s = LogStore(data, clock=lambda: NOW)
    log = s.open_log("p-0", CONFIG)
    fill(log, 400, 30, tombstone_every=17)
    before = records(log)
    old_files = {f: open(os.path.join(log.directory, f), "rb").read() for f in os.listdir(log.directory)}
    copies: list[tuple[str, str]] = []

    def at(step: str) -> None:
        dst = str(tmp_path / f"crash-{len(copies)}-{step}")
        copy_live_directory(data, dst)
        copies.append((step, dst))

    monkeypatch.setattr(cleaner, "swap_step_hook", at)
    plan = log.plan_clean(policy(), NOW)
    result = execute_plan(plan)
    assert len(result.rewritten) >= 2
    log.finish_clean(plan, result)
    after = records(log)
    new_files = {f: open(os.path.join(log.directory, f), "rb").read() for f in os.listdir(log.directory)}
    monkeypatch.setattr(cleaner, "swap_step_hook", None)
    clean_until_done(log, policy(), NOW)
    final = records(log)
    s.close()
    assert [step for step, _ in copies] == ["written", "intent"] + ["renamed"] * len(result.rewritten) + STEPS[3:]
    for n, (step, dst) in enumerate(copies):
        s2 = LogStore(dst, clock=lambda: NOW)
        try:
            log2 = s2.open_log("p-0", CONFIG)
            assert log2.fenced_batches() == [], step
            swapping = step in ("intent", "renamed", "dir_synced", "reindexed")
            assert any("interrupted cleaner swap" in line for line in log2.recovery_report) == swapping, step
            renamed_before = sum(1 for st, _ in copies[: n + 1] if st == "renamed")
            left = step in ("written", "intent") or (step == "renamed" and renamed_before < len(result.rewritten))
            assert any("unfinished cleaned segment" in line for line in log2.recovery_report) == left, step
            names = sorted(os.listdir(log2.directory))
            assert not [n for n in names if n.endswith(".cleaned")], step
            for name in names:
                content = open(os.path.join(log2.directory, name), "rb").read()
                assert content in (old_files.get(name), new_files.get(name)), (step, name)
            got = records(log2)
            assert set(after) <= set(got) <= set(before), step
            assert newest_per_key(got) == newest_per_key(before), step
            # The log goes on: another pass finishes what the crash interrupted (the high
            # watermark, never flushed here, is set again as a leader would).
            log2.set_high_watermark(log2.log_end_offset)
            clean_until_done(log2, policy(), NOW)
            assert records(log2) == final, step
        finally:
            s2.close()


def test_worker_module_runs_a_plan(store):
    """``python -m kolk.segments.clean_worker``: a plan on stdin, the result on stdout."""
    log = store.open_log("p-0", CONFIG)
    fill(log, 100, 10)
    plan = log.plan_clean(policy(), NOW)
    done = subprocess.run([sys.executable, "-m", "kolk.segments.clean_worker"], input=plan.to_json().encode(),
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    stats = log.finish_clean(plan, CleanResult.from_json(done.stdout))
    assert stats.records_removed == 90 and len(records(log)) == 10
