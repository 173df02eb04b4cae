"""The cleaner on the log: plan a pass, swap its result in crash-safely, check for a key.

A pass is split so that the heavy part runs off the event loop, in a worker process
(clean_worker.py; decoding records holds the GIL, so a thread would starve the loop):

1. :func:`plan_clean` (on the loop, cheap): which sealed segments the pass covers, the dirty
   range, the policy and ``now``, as a :class:`CleanPlan` (plain data, JSON);
2. :func:`execute_plan` (clean_exec.py, in the worker): reads those files, writes each one it
   changes beside the original as ``<base>.cleaned``, fsynced;
3. :func:`finish_clean` (on the loop): refuses a stale plan, else swaps.

The swap, and what a crash at each step leaves (the loader finishes it on open):

========================================== ===============================================
step                                        a crash after it leaves
========================================== ===============================================
``.cleaned`` files written and fsynced      old segments; the open deletes ``.cleaned``
intent (segment bases) put and flushed      old segments, re-indexed from their files
each rename of ``.cleaned`` over ``.log``   each segment old or new (a rename is atomic),
                                            all re-indexed from their files
directory fsynced, segments reopened,       new segments, re-indexed again from the files
index rebuilt
cleaned offset put, flushed, intent         done; the next pass starts at the new cleaned
cleared, flushed                            offset
========================================== ===============================================

The old and the new copy of a segment hold the same surviving records at the same offsets,
so either is a correct log; the cleaned offset is recorded only after the swap, so a crash
costs at most a pass done again. A read in flight on an old segment (a FileRegion) refuses
cleanly with :class:`SegmentDeletedError`, as after retention.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Callable

from .batch import iter_batches
from .clean_exec import execute_plan
from .clean_plan import CleanError, CleanPlan, CleanResult, CleanStats, PlannedSegment, StaleCleanError
from .compaction import CompactionPolicy, EraseSpec, cleanable_count
from .index_db import CLEAN_DUE, CLEAN_INTENT, CLEANED_OFFSET, PARTITION_STATE, Q, state_key
from .loader import encode_bases, reindex_sealed
from .records import decode_records
from .segment import Segment, fsync_directory

if TYPE_CHECKING:
    from .log import PartitionLog

# Tests set this to see (and copy the files at) each step of the swap: called with a step
# name ("written", "intent", "renamed", "dir_synced", "reindexed", "done").
swap_step_hook: Callable[[str], None] | None = None


def _step(name: str) -> None:
    if swap_step_hook is not None:
        swap_step_hook(name)


def cleaned_offset(log: "PartitionLog") -> int:
    raw = log._index.get(PARTITION_STATE, state_key(log._pkey, CLEANED_OFFSET))
    stored = Q.unpack(raw)[0] if raw else 0
    return max(stored, log.log_start_offset)


def _clean_due(log: "PartitionLog") -> int:
    raw = log._index.get(PARTITION_STATE, state_key(log._pkey, CLEAN_DUE))
    return Q.unpack(raw)[0] if raw else -1


def plan_clean(log: "PartitionLog", policy: CompactionPolicy, now_ms: int,
               erase: EraseSpec | None = None) -> CleanPlan | None:
    """The next pass's plan, or None when there is nothing to do (module doc)."""
    log._check_open()
    segs = log._segments
    summaries = log.segments()
    hw = log.high_watermark
    count = cleanable_count(summaries, high_watermark=hw, now_ms=now_ms,
                            min_compaction_lag_ms=policy.min_compaction_lag_ms)
    planned = count
    if erase is not None:
        # Erasure ignores the lag: every sealed segment below the high watermark that holds
        # offsets up to upto_offset (the caller rolls the active segment first).
        n = 0
        while (n < len(segs) - 1 and segs[n].next_offset <= hw
               and segs[n].base_offset <= erase.upto_offset):
            n += 1
        planned = max(planned, n)
    # A segment with a fenced (corrupt) batch is never rewritten, nor anything after it.
    for i in range(planned):
        if log._fences.get(segs[i].base_offset):
            planned = i
            count = min(count, i)
            break
    if planned == 0:
        return None
    start = cleaned_offset(log)
    end = segs[count - 1].next_offset if count else start
    end = max(end, start)
    due = _clean_due(log)
    if erase is None and start >= end and not (0 <= due <= now_ms):
        return None
    return CleanPlan(
        log_name=log.name, directory=log.directory, generation=log.generation,
        segments=tuple(PlannedSegment(s.base_offset, s.next_offset, s.size, os.fstat(s.fd).st_ino, s.path)
                       for s in segs[:planned]),
        cleaned_offset=start, cleanable_end=end, now_ms=now_ms, policy=policy, erase=erase,
        batch_bytes_max=log.config.batch_bytes_max)


def _remove_cleaned(result: CleanResult) -> None:
    for r in result.rewritten:
        try:
            os.unlink(r.cleaned_path)
        except FileNotFoundError:
            pass


def finish_clean(log: "PartitionLog", plan: CleanPlan, result: CleanResult) -> CleanStats:
    """Swap the cleaned segments in (module doc), or raise :class:`StaleCleanError`."""
    def refuse(why: str) -> StaleCleanError:
        _remove_cleaned(result)
        return StaleCleanError(f"log {plan.log_name}: clean not applied, {why}; plan again")

    if log.closed:
        raise refuse("the log is closed")
    if log.failure is not None:
        _remove_cleaned(result)
        raise log.failure
    if plan.directory != log.directory or plan.log_name != log.name:
        raise refuse(f"the plan is for {plan.directory}")
    if plan.generation != log.generation:
        raise refuse("the log was truncated or reset since the plan")
    planned = {s.base_offset: s for s in plan.segments}
    targets: list[tuple[int, Segment]] = []
    for r in result.rewritten:
        p = planned.get(r.base_offset)
        seg = log._segment_or_none(r.base_offset)
        if p is None or seg is None:
            raise refuse(f"segment {r.base_offset} is gone (retention or a log start move)")
        i = log._segments.index(seg)
        if i == len(log._segments) - 1 or seg.size != p.size or os.fstat(seg.fd).st_ino != p.inode:
            raise refuse(f"segment {r.base_offset} changed since the plan")
        if r.cleaned_path != os.path.join(log.directory, os.path.basename(r.cleaned_path)):
            raise refuse(f"{r.cleaned_path} is not in {log.directory}")
        try:
            if os.stat(r.cleaned_path).st_size != r.size:
                raise refuse(f"{r.cleaned_path} is not the size the cleaner wrote")
        except FileNotFoundError:
            raise refuse(f"{r.cleaned_path} is missing") from None
        targets.append((i, seg))
    _step("written")
    before = sum(seg.size for _, seg in targets)
    state = lambda name: state_key(log._pkey, name)  # noqa: E731
    try:
        if targets:
            log._index.put(PARTITION_STATE, state(CLEAN_INTENT), encode_bases([s.base_offset for _, s in targets]))
            log._index.flush()
            _step("intent")
            for (_, seg), r in zip(targets, result.rewritten):
                os.rename(r.cleaned_path, seg.path)
                _step("renamed")
            fsync_directory(log.directory)
            _step("dir_synced")
            for i, old in targets:
                new = Segment(log.directory, old.base_offset, old.created_ms, create=False)
                new.next_offset = old.next_offset
                log._segments[i] = new
                old.deleted = True  # FileRegions of the old file refuse (SegmentDeletedError)
                old.close()
                reindex_sealed(log, new, log._segments[i + 1].base_offset)
            _step("reindexed")
        new_cleaned = max(cleaned_offset(log), result.map_end)
        log._index.put(PARTITION_STATE, state(CLEANED_OFFSET), Q.pack(new_cleaned))
        log._index.put(PARTITION_STATE, state(CLEAN_DUE), Q.pack(result.tombstone_due_ms))
        log._index.flush()
        if targets:
            log._index.delete(PARTITION_STATE, state(CLEAN_INTENT))
            log._index.flush()
    except OSError as e:
        raise log._guard.fail(f"cleaner swap in {log.directory}: {e}") from e
    _step("done")
    return CleanStats(cleaned_offset=cleaned_offset(log), segments_swapped=len(targets),
                      records_removed=result.records_removed, records_erased=result.records_erased,
                      bytes_before=before, bytes_after=sum(r.size for r in result.rewritten),
                      keys_in_map=result.keys_in_map, seconds=result.seconds)


def clean(log: "PartitionLog", policy: CompactionPolicy, now_ms: int, erase: EraseSpec | None = None) -> CleanStats:
    """Plan, execute in this process, finish: one pass, synchronously (tests, tools)."""
    plan = plan_clean(log, policy, now_ms, erase)
    if plan is None:
        return CleanStats(cleaned_offset(log), 0, 0, 0, 0, 0, 0, 0.0)
    return finish_clean(log, plan, execute_plan(plan))


def holds_key(log: "PartitionLog", key_sha256: bytes, upto_offset: int) -> bool:
    """Does any record at an offset <= ``upto_offset`` have a key whose SHA-256 is
    ``key_sha256``? Reads every batch of the log's files (CRC-checked)."""
    log._check_open()
    offset = log.log_start_offset
    end = min(log.log_end_offset, upto_offset + 1)
    while offset < end:
        r = log.read(offset, 4 << 20, upto=end)
        if not r.data:
            break
        for pos, h in iter_batches(r.data, log.config.batch_bytes_max):
            if h.is_control:
                continue
            for rec in decode_records(r.data, pos):
                if (rec.key is not None and rec.offset <= upto_offset
                        and hashlib.sha256(rec.key).digest() == key_sha256):
                    return True
        offset = r.next_offset
    return False


WORKER_MODULE = "kolk.segments.clean_worker"
# What run_plan_in_process runs: clean_worker.main with this package imported by its path
# under a private name, so that the worker does not import the rest of kolk (the client and
# its dependencies: ~0.2 s of CPU per pass). ``python -m kolk.segments.clean_worker`` is the
# same program.
_LAUNCH = (
    "import importlib.util,sys\n"
    "d=sys.argv[1]\n"
    "s=importlib.util.spec_from_file_location('_kolk_segments',d+'/__init__.py',submodule_search_locations=[d])\n"
    "m=importlib.util.module_from_spec(s);sys.modules['_kolk_segments']=m;s.loader.exec_module(m)\n"
    "from _kolk_segments.clean_worker import main\n"
    "sys.exit(main())\n"
)


def run_plan_in_process(plan: CleanPlan, timeout_s: float) -> CleanResult:
    """Run ``plan`` in a worker process (clean_worker.py, launched as ``_LAUNCH`` says); raises
    :class:`CleanError` with the worker's one-line error, or when it outlives ``timeout_s``
    (it is killed, and its ``.cleaned`` files are left for the next open or pass to remove)."""
    try:
        done = subprocess.run([sys.executable, "-c", _LAUNCH, os.path.dirname(os.path.abspath(__file__))],
                              input=plan.to_json().encode(),
                              capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise CleanError(f"log {plan.log_name}: the clean worker ran past {timeout_s} s and was killed") from None
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise CleanError(f"log {plan.log_name}: the clean worker failed (exit {done.returncode}): "
                         f"{why[-1] if why else 'no message'}")
    return CleanResult.from_json(done.stdout)
