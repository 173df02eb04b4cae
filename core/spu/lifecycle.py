"""A topic's lifecycle on one SPU: its settings applied to every replica, retention, the
cleaner (compaction) and erasures (docs/lifecycle.md).

* **Settings.** A replica's log runs with its topic's effective config
  (``kolk.metadata.topic_config.resolve``: the topic's keys over the cluster defaults over the
  built-in ones). A change from the watch is applied at once, without a restart: a new
  segment size from the next roll, new retention limits from the next pass.
* **Retention** runs for every replica this SPU holds, leader and follower, every
  ``retention_interval_ms`` and soon after a segment rolls, one replica per turn of the event
  loop (deleting whole segments is a few unlinks and index deletions). A leader's log start is
  what consumers see; followers learn it on every fetch (core/spu/follower.py) and move theirs.
* **The cleaner** compacts replicas of topics whose ``cleanup_policy`` has ``compact``: one job
  at a time per SPU. The plan and the swap run here, on the loop, and are cheap; the work
  (reading, decoding, writing the cleaned segments, fsync) runs in a worker process at nice 10
  (``python -m kolk.segments.clean_worker``), killed by its pid past its deadline, so Python's
  record decoding never holds this process's GIL.
* **Erasures** (``kolk topic erase``) come from the metadata: for each pending erasure of a
  partition held here and not yet done by this SPU, once the tombstone is committed here, the
  active segment is rolled if it holds the tombstone, the cleaner removes every record of the
  key at or below it, a second pass over the files proves none is left, and the SC is told.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..metadata.topic_config import TopicConfig, resolve
from ..protocol.errors import KolkError
from ..segments import LogConfig, decode_records
from ..segments.errors import StorageError
from .replica_store import save_producers

if TYPE_CHECKING:
    from .replica import Replica
    from .server import SpuServer

log = logging.getLogger("kolk.spu.lifecycle")

# The clean worker runs at nice 10 and dies with the SPU (PR_SET_PDEATHSIG: an SPU killed
# mid-clean leaves no worker behind); both set inside it, as preexec_fn is unsafe in a
# process with threads.
WORKER_MAIN = ("import ctypes, os, runpy, signal, sys; ppid = int(sys.argv[1]); "
               "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0); "
               "os.getppid() == ppid or os._exit(1); os.nice(10); "
               "runpy.run_module('kolk.segments.clean_worker', run_name='__main__')")
WORKER_OUTPUT_BYTES_MAX = 4 << 20  # a clean result is a small JSON document
CONFIG_CACHE_MAX = 10_000  # topics whose effective config is kept computed
RETENTION_AFTER_ROLL_S = 0.05  # a roll wakes the retention pass this soon (batches the rolls of a burst)


@dataclass(frozen=True)
class LifecycleConfig:
    retention_interval_ms: int = 300_000
    cleaner_interval_ms: int = 15_000
    cleaner_bytes_per_s: int = 64 << 20
    cleaner_key_map_bytes: int = 64 << 20
    cleaner_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        def need(ok: bool, why: str) -> None:
            if not ok:
                raise ValueError(why)

        need(100 <= self.retention_interval_ms <= 86_400_000,
             f"--retention-interval-ms must be from 100 to 86400000, got {self.retention_interval_ms}")
        need(100 <= self.cleaner_interval_ms <= 86_400_000,
             f"--cleaner-interval-ms must be from 100 to 86400000, got {self.cleaner_interval_ms}")
        need(1 << 16 <= self.cleaner_bytes_per_s <= 1 << 40,
             f"--cleaner-bytes-per-s must be from 65536 to 2^40, got {self.cleaner_bytes_per_s}")
        need(1 << 20 <= self.cleaner_key_map_bytes <= 16 << 30,
             f"--cleaner-key-map-mib must be from 1 to 16384, got {self.cleaner_key_map_bytes >> 20}")
        need(1 <= self.cleaner_timeout_s <= 86_400, "cleaner timeout must be from 1 s to a day")


def topic_of(partition_name: str) -> str:
    return partition_name.rsplit("-", 1)[0]


def log_config_for(tc: TopicConfig) -> LogConfig:
    """The storage settings a replica's log runs with under topic config ``tc``."""
    return LogConfig(segment_bytes=tc.segment_bytes, segment_ms=tc.segment_ms,
                     retention_bytes=tc.retention_bytes if tc.deletes else -1,
                     retention_ms=tc.retention_ms if tc.deletes else -1)


class Lifecycle:
    def __init__(self, server: "SpuServer", config: LifecycleConfig) -> None:
        self.s = server
        self.config = config
        self.defaults: dict[str, str] = {}  # the cluster's topic defaults (object config/topic-defaults)
        self.erasures: dict[str, dict[str, Any]] = {}  # pending erasures, by name
        self._erased_here: set[str] = set()  # erasures this SPU finished and reported
        self._erased_counts: dict[str, int] = {}  # records each pending erasure removed here (tombstone included)
        self._retention_due: set[str] = set()
        self._retention_kick = asyncio.Event()
        self._cleaner_kick = asyncio.Event()
        self._worker: asyncio.subprocess.Process | None = None
        self._segment_counts: dict[str, int] = {}
        self._configs: dict[str, tuple[Any, TopicConfig]] = {}  # topic -> (what it was computed from, config)
        self.cleaner_runs = 0

    # ---------------------------------------------------------------- settings

    def topic_config(self, replica: "Replica") -> TopicConfig:
        """The effective config of the replica's topic (cached per topic version, defaults and
        replica count: produce asks on every request)."""
        name = topic_of(replica.name)
        topic = self.s.topics.get(name)
        rf = len(replica.replicas) or 1
        key = (topic.get("version") if topic else None, id(self.defaults), rf)
        cached = self._configs.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        raw = dict(topic["spec"].get("config", {})) if topic else {}
        try:
            tc = resolve(raw, self.defaults, rf)
        except ValueError as e:  # the SC checks every config; a bad one here is a bug, not the user's
            log.error("%s: topic config %s cannot be applied (%s); running with the defaults", replica.name, raw, e)
            tc = resolve({}, {}, rf)
        if len(self._configs) >= CONFIG_CACHE_MAX:
            self._configs.clear()
        self._configs[name] = (key, tc)
        return tc

    def apply(self, replica: "Replica") -> None:
        """Give the replica's log its topic's effective settings (no-op when unchanged)."""
        wanted = log_config_for(self.topic_config(replica))
        lg = replica.log
        if lg.config.segment_bytes != wanted.segment_bytes or lg.config.segment_ms != wanted.segment_ms or \
                lg.config.retention_bytes != wanted.retention_bytes or \
                lg.config.retention_ms != wanted.retention_ms:
            lg.reconfigure(_with_settings(lg.config, wanted))
            self._retention_due.add(replica.name)
            self._retention_kick.set()
            self._cleaner_kick.set()

    def on_topic_changed(self, topic: str) -> None:
        for name, replica in list(self.s.replicas.items()):
            if topic_of(name) == topic:
                self._safely(replica, self.apply)

    def on_defaults(self, obj: dict[str, Any] | None) -> None:
        self.defaults = dict(obj["spec"]) if obj else {}
        for replica in list(self.s.replicas.values()):
            self._safely(replica, self.apply)

    def on_full_sync(self) -> None:
        """A full sync brings every object again: what it lacks is gone (the events that
        follow set the defaults and pending erasures anew; every topic's replicas are then
        given their config again)."""
        self.defaults = {}
        self.erasures.clear()
        self._configs.clear()

    def on_erasure(self, name: str, obj: dict[str, Any] | None) -> None:
        if obj is None or obj.get("status", {}).get("state") == "done":
            self.erasures.pop(name, None)
            self._erased_here.discard(name)
            self._erased_counts.pop(name, None)
            return
        self.erasures[name] = obj
        if self.s.config.spu_id not in obj.get("status", {}).get("done", []):
            self._erased_here.discard(name)  # our replica lost its data since: erase the new copy too
        self._cleaner_kick.set()

    def after_append(self, replica: "Replica") -> None:
        """Called after every append: a roll makes retention (and cleaning) due soon."""
        count = replica.log.segment_count
        if self._segment_counts.get(replica.name) != count:
            self._segment_counts[replica.name] = count
            self._retention_due.add(replica.name)
            self._retention_kick.set()

    def forget(self, name: str) -> None:
        self._segment_counts.pop(name, None)
        self._retention_due.discard(name)

    def _safely(self, replica: "Replica", fn: Any) -> None:
        try:
            fn(replica)
        except StorageError as e:
            self.s.disk.on_error(replica, e)
        except Exception:  # noqa: BLE001 - one replica's failure must not stop the others
            log.exception("%s: applying the topic config failed", replica.name)

    # ---------------------------------------------------------------- tasks

    def start(self) -> list["asyncio.Task[Any]"]:
        return [asyncio.ensure_future(self._retention_loop()), asyncio.ensure_future(self._cleaner_loop())]

    def stop(self) -> None:
        worker = self._worker
        if worker is not None and worker.returncode is None:
            try:
                os.kill(worker.pid, 9)
            except ProcessLookupError:
                pass

    async def _wait(self, kick: asyncio.Event, period_s: float) -> None:
        try:
            async with asyncio.timeout(period_s):
                await kick.wait()
        except TimeoutError:
            pass
        kick.clear()

    async def _retention_loop(self) -> None:
        period = self.config.retention_interval_ms / 1000
        next_full = time.monotonic() + period
        while True:
            await self._wait(self._retention_kick, max(0.0, next_full - time.monotonic()))
            if time.monotonic() >= next_full:
                names = list(self.s.replicas)
                next_full = time.monotonic() + period
                self._retention_due.clear()
            else:
                await asyncio.sleep(RETENTION_AFTER_ROLL_S)  # batch the rolls of a burst (a period)
                names = sorted(self._retention_due)
                self._retention_due.clear()
            for name in names:
                replica = self.s.replicas.get(name)
                if replica is not None:
                    self.retain(replica)
                await asyncio.sleep(0)  # one replica per turn: produce and fetch go on between

    def retain(self, replica: "Replica") -> list[int]:
        """One retention pass over one replica; the base offsets of the segments deleted."""
        if replica.failure is not None or replica.log.closed:
            return []
        lg = replica.log
        try:
            if _expired_active(lg, int(time.time() * 1000)):
                # Every record of the active segment is past retention_ms and committed: seal it
                # so that retention can delete it (as Kafka does), else an idle topic keeps its
                # last segment until the next append.
                lg.roll()
            removed = lg.enforce_retention()
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            return []
        if removed:
            log.info("%s: retention deleted %d segment(s); the log starts at %d now", replica.name, len(removed),
                     replica.log.log_start_offset)
            self._segment_counts[replica.name] = replica.log.segment_count
            replica.wake()
        return removed

    async def _cleaner_loop(self) -> None:
        period = self.config.cleaner_interval_ms / 1000
        while True:
            await self._wait(self._cleaner_kick, period)
            for name in list(self.erasures):
                try:
                    await self._erase(name)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - the cleaner must not die; the next round tries again
                    log.exception("erasure %s failed here; trying again in the next round", name)
            for name in list(self.s.replicas):
                replica = self.s.replicas.get(name)
                if replica is None or not self.topic_config(replica).compacted:
                    continue
                try:
                    await self.clean(replica)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - as above
                    log.exception("%s: cleaning failed; trying again in the next round", name)

    # ---------------------------------------------------------------- cleaning

    def _policy(self, replica: "Replica") -> Any:
        from ..segments.cleaner import CompactionPolicy

        tc = self.topic_config(replica)
        return CompactionPolicy(delete_retention_ms=tc.delete_retention_ms,
                                min_compaction_lag_ms=tc.min_compaction_lag_ms,
                                key_map_bytes=self.config.cleaner_key_map_bytes,
                                bytes_per_s=self.config.cleaner_bytes_per_s)

    async def clean(self, replica: "Replica", erase: Any = None) -> Any:
        """One cleaner pass over ``replica`` (compaction, or an erasure when ``erase``); the
        stats, or None when there was nothing to do or the log changed under it."""
        from ..segments.cleaner import StaleCleanError

        if replica.failure is not None or replica.log.closed:
            return None
        lg = replica.log
        try:
            plan = lg.plan_clean(self._policy(replica), int(time.time() * 1000), erase=erase)
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            return None
        if plan is None:
            return None
        result = await self._run_worker(plan)
        if self.s.replicas.get(replica.name) is not replica or lg.closed:
            return None
        try:
            stats = lg.finish_clean(plan, result)
        except StaleCleanError as e:
            log.info("%s: clean result dropped: %s", replica.name, e)
            return None
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            return None
        self.cleaner_runs += 1
        save_producers(self.s.store, replica)
        log.info("%s: cleaned: %s", replica.name, stats)
        replica.wake()
        return stats

    async def _run_worker(self, plan: Any) -> Any:
        from ..segments.cleaner import CleanResult

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER_MAIN, str(os.getpid()), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        self._worker = proc
        try:
            async with asyncio.timeout(self.config.cleaner_timeout_s):
                out, err = await proc.communicate(plan.to_json().encode())
        finally:
            if proc.returncode is None:
                try:
                    os.kill(proc.pid, 9)  # past the deadline or cancelled: by its own pid
                except ProcessLookupError:
                    pass
                await proc.wait()
            self._worker = None
        if proc.returncode != 0:
            why = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            raise RuntimeError(f"the clean worker failed: {why[0][:500]}")
        if len(out) > WORKER_OUTPUT_BYTES_MAX:
            raise RuntimeError(f"the clean worker answered {len(out)} bytes, more than {WORKER_OUTPUT_BYTES_MAX}")
        return CleanResult.from_json(out)

    # ---------------------------------------------------------------- erasure

    async def _not_a_tombstone(self, replica: "Replica", offset: int, key_sha: bytes) -> str | None:
        try:
            return await _not_a_tombstone_at(replica.log, replica.name, offset, key_sha)
        except StorageError as e:
            self.s.disk.on_error(replica, e)
            return None

    async def _erase(self, name: str) -> None:
        from ..segments.cleaner import EraseSpec

        obj = self.erasures.get(name)
        if obj is None or name in self._erased_here:
            return
        spec, status = obj["spec"], obj.get("status", {})
        me = self.s.config.spu_id
        if me in status.get("done", []):
            return
        replica = self.s.replicas.get(f"{spec['topic']}-{spec['partition']}")
        if replica is None or replica.failure is not None:
            return
        offset = int(spec["offset"])
        lg = replica.log
        key_sha = bytes.fromhex(spec["key_sha256"])
        if replica.is_leader:
            why = await self._not_a_tombstone(replica, offset, key_sha)
            if why is not None:
                log.warning("erasure %s: %s", name, why)
                try:
                    await self.s.admin.erasure_done(name, me, found=False, note=why)
                except KolkError as e:
                    log.warning("erasure %s: telling the SC failed (%s); trying again", name, e)
                    return
                self._erased_here.add(name)
                return
        if lg.high_watermark <= offset:
            return  # the tombstone is not committed here yet; the next round looks again
        if lg.segments()[-1].base_offset <= offset:
            lg.roll()  # the key's records must all be in sealed segments to be rewritten
        erase = EraseSpec(key_sha256=key_sha, upto_offset=offset)
        # Erase, then prove: a second pass over the same files (in the worker, off the loop)
        # must find no record of the key left at or below the tombstone.
        for attempt in ("erase", "proof"):
            stats = await self.clean(replica, erase=erase)
            if self.s.replicas.get(replica.name) is not replica:
                return
            if stats is None:
                if lg.log_start_offset > offset:
                    break  # retention removed every offset the erasure covers
                log.info("erasure %s: %s could not be cleaned now; trying again", name, replica.name)
                self._cleaner_kick.set()
                return
            self._erased_counts[name] = self._erased_counts.get(name, 0) + stats.records_erased
            if attempt == "proof" and stats.records_erased:
                log.warning("erasure %s: the proof pass still found %d record(s) of the key in %s; trying again",
                            name, stats.records_erased, replica.name)
                self._cleaner_kick.set()
                return
        try:
            await self.s.admin.erasure_done(name, me, found=self._erased_counts.get(name, 0) > 1)
        except KolkError as e:
            log.warning("erasure %s: telling the SC failed (%s); trying again", name, e)
            return
        self._erased_here.add(name)
        self._erased_counts.pop(name, None)
        log.info("erasure %s: no record of the key is left in %s here", name, replica.name)


async def _not_a_tombstone_at(lg: Any, name: str, offset: int, key_sha: bytes) -> str | None:
    """Why ``offset`` of the log is not a tombstone of the key (the erasure then erases
    nothing), or None: it is one, or the offset holds no record any more (erased already, or
    compacted: the erasure goes on)."""
    if offset >= lg.log_end_offset:
        return f"offset {offset} is past the log end {lg.log_end_offset} of {name}: no tombstone there, nothing erased"
    if offset < lg.log_start_offset:
        return None
    res = lg.read(offset, 1)  # the batch holding the offset, whole
    if not res.data:
        return None
    records = await asyncio.to_thread(_records_of_first_batch, res.data)
    for r in records:
        if r.offset == offset:
            if r.value is not None or r.key is None or hashlib.sha256(r.key).digest() != key_sha:
                return (f"the record at offset {offset} of {name} is not a tombstone of the key: "
                        "nothing erased")
            return None
    return None


def _records_of_first_batch(data: bytes) -> list[Any]:
    return decode_records(data, 0)


def _expired_active(lg: Any, now_ms: int) -> bool:
    """Whether the log's active segment holds records, all committed and older than retention_ms."""
    retention_ms = lg.config.retention_ms
    if retention_ms < 0 or lg.high_watermark != lg.log_end_offset:
        return False
    active = lg.segments()[-1]
    return active.size > 0 and active.max_timestamp >= 0 and now_ms - active.max_timestamp > retention_ms


def _with_settings(current: LogConfig, wanted: LogConfig) -> LogConfig:
    from dataclasses import replace

    return replace(current, segment_bytes=wanted.segment_bytes, segment_ms=wanted.segment_ms,
                   retention_bytes=wanted.retention_bytes, retention_ms=wanted.retention_ms)
