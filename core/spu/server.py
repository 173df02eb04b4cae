"""The SPU (stream processing unit): holds partition replicas, leads some, follows others.

One asyncio loop per process (DESIGN.md §2, §10). On start the SPU opens its data directory,
serves ``SpuRequest``s on Kolk's framed transport (core/protocol/; the calls are handled in
core/spu/api.py and core/spu/replication_api.py), registers with the SC, sends heartbeats to
the SC leader, and follows the metadata by watch: it opens a log for every partition it holds
a replica of, leads those the SC says it leads, and runs a follower task (core/spu/follower.py)
for the others. As leader it asks the SC to shrink or grow a partition's in-sync set as
followers fall behind or catch up; only committed sets count, and a leader the SC or a follower
says is stale acknowledges nothing more. Those decisions are the replica state machine's
(core/spu/replica_state.py): :meth:`SpuServer.step` feeds it an event and carries out the
effects (the log's high watermark, follower tasks, requests to the SC). docs/replication.md
has the whole protocol.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from prometheus_client import CollectorRegistry

from .. import __version__
from ..client.admin import AdminClient, watch
from ..metadata.controllers import offline_reason
from ..node.audit import AuditLog
from ..node.authz import Authorizer
from ..observe.metrics_server import NodeMetrics
from ..protocol.errors import KolkError, NotFoundError, StaleEpochError, VersionConflictError
from ..protocol.fair_use import FairUse
from ..protocol.wire import set_error
from ..segments import LogConfig, LogStore
from ..segments.errors import StorageError
from ..segments.faults import install_fsync_fault_file
from ..segments.store import MARKER
from ..transport import SPU, serve
from .api import SpuHandler
from .config import SpuConfig
from .coordinator import Coordinator
from .disk_faults import DiskFaults
from .follower import PeerPool, follow
from .lifecycle import Lifecycle
from .metrics import SpuMetrics
from .metrics_collector import SpuCollector
from .replica_store import open_replica_log, restore_producers
from .private_address import private_address_problem
from .move_throttle import MoveThrottle
from .replica import Replica
from .replica_open import ReplicaOpener
from .replica_state import (AdvanceHighWatermark, Durable, Effect, Event, Fence, IsrChangeAnswered, IsrOutcome,
                            MetadataChanged, RequestIsrChange, StartFollowing, StartLeading, StopFollowing, Tick)
from .shutdown import controlled_shutdown
from .smartmodules import SmartModuleRegistry

log = logging.getLogger("kolk.spu")

FAIL_FSYNC_ENV = "KOLK_TEST_FAIL_FSYNC_FILE"
# How long a client's request waits for its partition's log to open (core/spu/replica_open.py)
# before it is answered a retriable offline; opening one log takes milliseconds when idle.
OPEN_WAIT_S = 5.0


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class SpuServer:
    def __init__(self, config: SpuConfig) -> None:
        self.config = config
        # What /metrics serves (docs/metrics.md): every SPU collector registers here.
        self.registry = CollectorRegistry()
        self.node_metrics = NodeMetrics(self.registry, __version__)  # process metrics, loop lag, the listener
        # The data directory is opened in start(), once the listener is bound and the private
        # address checked: an SPU that cannot serve leaves no directory behind.
        self.store: LogStore
        # Random per process (as uuid4().hex): tells this SPU from any other, even one with its id.
        self.instance_id = os.urandom(16).hex()
        self.admin = AdminClient(config.sc_addresses, timeout_s=30, tls=config.tls, credential=config.credential)
        self.replicas: dict[str, Replica] = {}
        self.move_throttle = MoveThrottle()  # the copy rate of replicas moves add (core/spu/move_throttle.py)
        self.partitions: dict[str, dict[str, Any]] = {}  # every partition of the cluster, by name
        self.topics: dict[str, dict[str, Any]] = {}
        self.spus: dict[int, dict[str, Any]] = {}
        self.metadata_version = 0
        self.streams = 0
        self.connections = 0  # open connections (SpuHandler counts them), for /metrics
        self.metrics = SpuMetrics(self.registry)  # histograms and in-sync counts (core/spu/metrics.py)
        self.fair_use = FairUse(f"SPU {config.spu_id}", config.fair_use_limits())
        self.peers = PeerPool(config.tls, config.credential)
        self.smartmodules = SmartModuleRegistry(self.admin, config.smartmodules)
        self.smartmodules.observe = self.metrics.smartmodules.observe
        self.audit = AuditLog(f"spu-{config.spu_id}", config.sc_addresses, config.tls, config.credential)
        self.authz = Authorizer(f"spu-{config.spu_id}", config.tls is not None, self.audit.record)
        self._server: Any = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._watch_handle: Any = None
        self.address = config.public_address
        self.metadata_ready = asyncio.Event()
        self.disk = DiskFaults(self)
        self.lifecycle = Lifecycle(self, config.lifecycle)
        self.coordinator = Coordinator(self)
        # Replicas are opened on worker threads, never in the metadata callback (core/spu/replica_open.py).
        self.opener: ReplicaOpener[Replica] = ReplicaOpener(self._new_replica, self._replica_opened,
                                                            self._delete_log, self._log_deleted)
        self._metadata_held = False  # the last push was older than our registration: not acted on
        self._parked: set[str] = set()  # opened or deleted while the metadata was held; applied with the next push
        self.registry.register(SpuCollector(self))  # read at scrape time (core/spu/metrics_collector.py)
        # The metadata version that holds this SPU's registration: roles from an older version
        # (a lagging SC's) are not acted on, since they may predate a lost storage's fencing.
        self.registered_version: int | None = None
        self.leaving = False  # stopping: heartbeats say so (controlled shutdown, core/spu/shutdown.py)
        # TEST ONLY: fail the next segment fsync when this file exists (tests, the fault harness).
        install_fsync_fault_file(os.environ.get(FAIL_FSYNC_ENV) or None)

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        # The listener, then the private address, then the data directory: an SPU that cannot
        # serve stops here with one line on stderr (SystemExit) and leaves nothing behind.
        listen = self.config.bind_address or self.config.public_address
        host, port = listen.rsplit(":", 1)
        try:
            self._server = await serve(SPU, lambda peer: SpuHandler(self, peer), host, int(port), self.config.tls,
                                       fair_use=self.fair_use)
        except OSError as e:
            reason = os.strerror(e.errno).lower() if e.errno else str(e)
            flag = "--bind" if self.config.bind_address else "--public"
            raise SystemExit(f"kolk spu: cannot listen for clients and SPUs on {listen} ({flag}): {reason}") from None
        bound = self._server.sockets[0].getsockname()
        self.address = f"{bound[0]}:{bound[1]}"
        try:  # metrics from the start: /health says how far the start has come (docs/metrics.md)
            await self.node_metrics.start(self.config.metrics_address, self.config.tls, self.health,
                                          f"spu-{self.config.spu_id}")
        except OSError as e:
            self._server.close()
            reason = os.strerror(e.errno).lower() if e.errno else str(e)
            raise SystemExit(f"kolk spu: cannot listen for metrics on {self.config.metrics_address}: "
                             f"{reason}") from None

        found = await private_address_problem(self.config, self.instance_id)
        if found:
            self._server.close()
            await self.node_metrics.stop()
            private = self.config.private_address or self.config.public_address
            flag = "--private" if self.config.private_address else "--public"
            also = "" if self.config.private_address else ", the private address too (no --private),"
            raise SystemExit(f"kolk spu: {flag} {private}{also} does not reach this SPU (listening on "
                             f"{self.address}): {found}")

        self.store = LogStore(self.config.data_dir)
        await self._register()
        self._tasks.append(self.disk.start(MARKER))
        self._tasks.append(asyncio.ensure_future(self._watch_loop()))
        self._tasks.append(asyncio.ensure_future(self._heartbeat_loop()))
        self._tasks.append(asyncio.ensure_future(self._isr_loop()))
        self._tasks.extend(self.lifecycle.start())
        self._tasks.append(self.coordinator.start())
        await asyncio.wait_for(self.metadata_ready.wait(), 30)
        if self.config.ready_file:
            tmp = self.config.ready_file + ".tmp"
            ready = {"address": self.address, "pid": os.getpid()}
            if self.node_metrics.address is not None:
                ready["metrics"] = self.node_metrics.address
            with open(tmp, "w") as f:
                json.dump(ready, f)
            os.replace(tmp, self.config.ready_file)
        log.info("SPU %d serving on %s", self.config.spu_id, self.address)

    async def _register(self, timeout_s: float = 60.0) -> None:
        """Register with the SC; registering again is harmless, so a connection that broke
        during the call (an SC still starting, a leader change) is simply retried."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        backoff = 0.02  # an SC still starting usually answers within a few tries
        lost = await asyncio.to_thread(self._short_logs)  # opens every log on disk: off the loop
        while True:
            try:
                self.registered_version = await self.admin.register_spu(
                    self.config.spu_id, self.config.public_address,
                    self.config.private_address or self.config.public_address, self.config.rack,
                    self.store.storage_id, lost)
                return
            except KolkError as e:
                if not e.retriable or loop.time() + backoff > deadline:
                    raise
                log.warning("registering with the SC at %s failed, trying again: %s",
                            ",".join(self.config.sc_addresses), e, extra={"repeat_key": ("sc", "register", str(e))})
            await asyncio.sleep(backoff)  # retry backoff, bounded
            backoff = min(backoff * 2, 1.0)

    def _short_logs(self) -> dict[str, str]:
        """Open every log on disk (recovery runs) and name those that came back below the high
        watermark they had persisted: acknowledged records are missing from them, so the SC
        must not count them in sync (DESIGN.md §5)."""
        short = {}
        for name in self.store.list_logs():
            try:
                lg = self.store.open_log(name, LogConfig())
            except (StorageError, ValueError) as e:
                log.error("%s: cannot open the log: %s", name, e)
                continue
            if lg.short_of_high_watermark is not None:
                short[name] = (f"SPU {self.config.spu_id}'s log ends at {lg.log_end_offset}, below the high "
                               f"watermark {lg.short_of_high_watermark} it had persisted")
                log.error("%s: %s; it rejoins the in-sync set only by catching up", name, short[name])
        return short

    def health(self) -> tuple[bool, str]:
        """/health: registered with the SC, its replicas opened from the metadata, and its
        data directory healthy (core/spu/disk_faults.py)."""
        me = f"SPU {self.config.spu_id}"
        if self.registered_version is None:
            return False, f"{me} is not registered with the SC yet"
        if not self.metadata_ready.is_set():
            return False, f"{me} has not received the metadata (its replicas are not opened yet)"
        if not self.disk.healthy:
            return False, f"{me}'s data directory {self.config.data_dir} is failing"
        return True, "ok"

    async def drain(self) -> None:
        """Before stop() on SIGTERM: hand this SPU's leaderships over (core/spu/shutdown.py)."""
        if self.config.shutdown_timeout_ms > 0 and self.registered_version is not None:
            await controlled_shutdown(self, self.config.shutdown_timeout_ms)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await self.node_metrics.stop()
        self.disk.stop()
        self.lifecycle.stop()
        self.coordinator.stop()
        for replica in self.replicas.values():
            self.stop_following(replica)
        self.peers.close()
        self.audit.stop()
        self.smartmodules.close()
        if self._server is not None:
            self._server.close()
        await self.opener.close()  # no open may run on a thread while the store closes
        try:
            self.store.close(sync=self.disk.healthy)
        except (StorageError, OSError) as e:  # a failed disk: nothing more can be saved
            log.error("closing the data directory failed: %s", e)

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval_ms / 1000
        while True:
            try:
                await self.admin.heartbeat(self.config.spu_id, leaving=self.leaving)
            except KolkError as e:
                log.warning("heartbeat to the SC at %s failed: %s", ",".join(self.config.sc_addresses), e,
                            extra={"repeat_key": ("sc", "heartbeat", str(e))})
            await asyncio.sleep(interval)  # heartbeat period

    # ---------------------------------------------------------------- metadata

    async def _watch_loop(self) -> None:
        """Keep a metadata watch open. When the stream ends (the SC ended it, or its connection
        was lost), or a status call made every heartbeat interval gets no answer in time (an SC
        that vanished without closing the connection), the SPU watches again, from the version
        it has, through whichever SC answers."""
        interval = self.config.heartbeat_interval_ms / 1000
        backoff = 0.05
        while True:
            client = AdminClient(self.config.sc_addresses, timeout_s=10, tls=self.config.tls,
                                 credential=self.config.credential)
            why: BaseException | str
            try:
                handle = self._watch_handle = await watch(client, self.metadata_version, self._on_metadata)
                backoff = 0.05
                why = await self._until_watch_lost(client, handle, interval)
            except asyncio.CancelledError:
                raise
            except (KolkError, OSError, TimeoutError) as e:
                why = e
            except Exception as e:  # noqa: BLE001 - the metadata watch must never die silently
                log.exception("metadata watch failed")
                why = e
            finally:
                await client.close()
            log.warning("metadata watch on the SC at %s lost (%s); watching again from version %d",
                        ",".join(self.config.sc_addresses), why, self.metadata_version,
                        extra={"repeat_key": ("sc", "watch", str(why))})
            await asyncio.sleep(backoff)  # retry backoff, bounded
            backoff = min(backoff * 2, 1.0)

    @staticmethod
    async def _until_watch_lost(client: AdminClient, handle: Any, interval: float) -> BaseException | str:
        """Probe the SC every ``interval`` until the watch ends or a probe fails; why."""
        ended = asyncio.ensure_future(handle.wait())
        probe_timeout_s = max(1.0, 4 * interval)
        try:
            while not (await asyncio.wait({ended}, timeout=interval))[0]:  # probe period
                try:
                    async with asyncio.timeout(probe_timeout_s):
                        await client.cluster_status()
                except TimeoutError:
                    return f"the SC did not answer a status call within {probe_timeout_s:g} s"
            return ended.result() or "the watch ended"
        finally:
            ended.cancel()

    def _on_metadata(self, full_sync: bool, version: int, events: list[dict[str, Any]]) -> None:
        if full_sync:
            seen = {e["name"] for e in events if e["kind"] == "partition"}
            for name in list(self.replicas):
                if name not in seen:
                    self._drop_replica(name)
            self.spus.clear()
            self.partitions.clear()
            self.topics.clear()
            self.smartmodules.clear()
            self.lifecycle.on_full_sync()
        for e in events:
            if e["kind"] == "spu":
                if e["deleted"]:
                    self.spus.pop(int(e["name"]), None)
                else:
                    self.spus[int(e["name"])] = e["object"]
            elif e["kind"] == "policy" and e["name"] == "active":
                self.authz.on_policy(None if e["deleted"] else e["object"])
            elif e["kind"] == "smartmodule":
                self.smartmodules.on_event(e["name"], None if e["deleted"] else e["object"])
            elif e["kind"] == "topic":
                if e["deleted"]:
                    self.topics.pop(e["name"], None)
                else:
                    self.topics[e["name"]] = e["object"]
            elif e["kind"] == "config" and e["name"] == "topic-defaults":
                self.lifecycle.on_defaults(None if e["deleted"] else e["object"])
            elif e["kind"] == "erasure":
                self.lifecycle.on_erasure(e["name"], None if e["deleted"] else e["object"])
        changed = []
        for e in events:
            if e["kind"] == "partition":
                if e["deleted"]:
                    self.partitions.pop(e["name"], None)
                else:
                    self.partitions[e["name"]] = e["object"]
                changed.append(e["name"])
        if self.registered_version is not None and version < self.registered_version:
            # An SC behind our registration: its roles may predate the fencing of a lost storage.
            log.info("metadata version %d is older than our registration at %d; waiting for newer", version,
                     self.registered_version)
            self._metadata_held = True
            return
        self._metadata_held = False
        if self._parked:  # opened or deleted while the metadata was held: their latest metadata applies now
            changed += list(self._parked - set(changed))
            self._parked.clear()
        if self.metadata_version < (self.registered_version or 0):
            # The first version we may act on: every partition, and every log on disk (those of
            # partitions deleted, or moved away, while this SPU was down are removed).
            changed = list(self.partitions)
            changed += [n for n in set(self.replicas) | set(self.store.list_logs()) if n not in self.partitions]
        for name in changed:
            try:
                obj = self.partitions.get(name)
                if obj is None:
                    self._drop_replica(name)
                else:
                    self._update_replica(name, obj)
            except Exception:  # noqa: BLE001 - one partition's failure must not stop the metadata
                log.exception("%s: applying the metadata failed; the replica is left as it was", name)
        for topic in {e["name"] for e in events if e["kind"] == "topic" and not e["deleted"]}:
            self.lifecycle.on_topic_changed(topic)
        self.metadata_version = version
        if not self.metadata_ready.is_set():
            self.opener.when_idle(self.metadata_ready.set)  # ready once the first opens and deletes are done

    def _update_replica(self, name: str, obj: dict[str, Any]) -> None:
        me = self.config.spu_id
        if me not in obj["spec"]["replicas"]:
            self._drop_replica(name)
            return
        if self.opener.busy(name):
            return  # its latest metadata is applied when the open or delete ends (_replica_opened, _log_deleted)
        replica = self.replicas.get(name)
        incarnation = int(obj["spec"].get("incarnation", 0))
        if replica is not None and replica.incarnation != incarnation:
            # Deleted and created again in one metadata push: the old log goes.
            self._drop_replica(name)
            replica = None
            if self.opener.busy(name):
                return  # the new incarnation opens once the old log is deleted (_log_deleted)
        if replica is None:
            self.opener.start(name, incarnation)  # on a worker thread; then _replica_opened
            return
        replica.meta = obj
        self.lifecycle.apply(replica)
        status, lg = obj.get("status", {}), replica.log
        # Leading starts, following starts or stops, the mark moves if the set shrank (a
        # replica fenced by its disk takes no role until rebuilt, core/spu/disk_faults.py).
        self.step(replica, MetadataChanged(
            status.get("leader"), int(status.get("epoch", 0)), tuple(obj.get("spec", {}).get("replicas", [])),
            tuple(status.get("isr", [])), lg.log_end_offset, lg.durable_offset, now_ms(),
            status.get("last_unclean_epoch")))
        replica.wake()

    def _replica_opened(self, name: str, replica: Replica | None, error: BaseException | None) -> None:
        """On the loop, after a worker opened ``name``: the replica is served from now on, with
        the partition's latest metadata applied (which drops it if, meanwhile, the partition
        was deleted, moved away or created again)."""
        if replica is None:
            log.error("%s: opening the log failed; no replica here until its metadata changes: %s", name, error)
            return
        self.replicas[name] = replica
        if self._metadata_held:
            self._parked.add(name)
            return
        obj = self.partitions.get(name)
        if obj is None:
            self._drop_replica(name)
        else:
            self._update_replica(name, obj)

    def _delete_log(self, name: str) -> None:
        """On a worker thread: remove a closed log's files and index entries."""
        self.store.delete_log(name)

    def _log_deleted(self, name: str, error: BaseException | None) -> None:
        """On the loop, after a worker deleted ``name``'s log: apply what the metadata says of
        the partition now (a new incarnation created meanwhile is opened)."""
        if error is not None:
            log.error("%s: deleting the log failed; it is left until the partition's metadata changes: %s",
                      name, error)
            return
        if self._metadata_held:
            self._parked.add(name)
            return
        obj = self.partitions.get(name)
        if obj is not None:
            self._update_replica(name, obj)

    def _new_replica(self, name: str, incarnation: int) -> Replica:
        replica = Replica(name, open_replica_log(self.store, name, incarnation, LogConfig()), self.config.spu_id,
                          self.config.replica_lag_max_ms, self.config.ignore_storage_id_for_tests)
        replica.incarnation = incarnation
        replica.group.on_fsync = self.metrics.observe_fsync
        restore_producers(self.store, replica)  # producers whose batches the cleaner removed
        return replica

    def step(self, replica: Replica, event: Event) -> list[Effect]:
        """Feed ``event`` to the replica's state machine and carry out what it decides here:
        the high watermark (then waiters wake), fences, leading and following, in-sync
        requests. The effects are returned too: the caller handles those of its own call
        (Refuse, Truncate, RefuseTruncation, ResetLog)."""
        effects = replica.state.step(event)
        for effect in effects:
            if isinstance(effect, AdvanceHighWatermark):
                replica.log.set_high_watermark(effect.offset)
                replica.wake()
            elif isinstance(effect, Fence):
                replica.wake()  # waiting acknowledgements see the fence and fail
            elif isinstance(effect, StopFollowing):
                self.stop_following(replica)
            elif isinstance(effect, StartFollowing):
                self.stop_following(replica)
                replica.follower_task = asyncio.ensure_future(follow(self, replica, effect.leader, effect.epoch))
            elif isinstance(effect, StartLeading):
                log.info("%s: leading at epoch %d from offset %d", replica.name, effect.epoch, effect.epoch_start)
            elif isinstance(effect, RequestIsrChange):
                log.info("%s: asking the SC for in-sync set %s (was %s)", replica.name, list(effect.isr),
                         list(effect.based_on))
                replica.isr_request = asyncio.ensure_future(self._request_isr(replica, effect))
        return effects

    def stop_following(self, replica: Replica) -> None:
        if replica.follower_task is not None:
            replica.follower_task.cancel()
            replica.follower_task = None

    def _drop_replica(self, name: str) -> None:
        """This SPU holds no replica of ``name`` (any more): stop it and delete its log, also
        one left on disk from before a restart."""
        if self.opener.busy(name):
            return  # its latest metadata is applied when the open or delete ends (_replica_opened, _log_deleted)
        replica = self.replicas.pop(name, None)
        self.lifecycle.forget(name)
        if replica is not None:
            self.stop_following(replica)
            replica.wake()
        if replica is not None or os.path.isdir(os.path.join(self.store.logs_dir, name)):
            log.info("%s: no replica here any more; deleting its log", name)
            # Closed here, on the loop, so no read meets a file closed under it; the files and
            # index entries go on a worker (core/spu/replica_open.py), then _log_deleted.
            self.store.close_log(name)
            if replica is not None:
                replica.log.mark_deleted()
            self.opener.delete(name)

    def spu_address(self, spu_id: int | None) -> str:
        if spu_id is None:
            return ""
        spu = self.spus.get(spu_id)
        return spu["spec"]["public_address"] if spu else ""

    def spu_private_address(self, spu_id: int) -> str:
        spu = self.spus.get(spu_id)
        return spu["spec"]["private_address"] if spu else ""

    async def opened_replica(self, topic: str, partition: int, result: Any) -> Replica | None:
        """:meth:`leader_replica`, after waiting up to :data:`OPEN_WAIT_S` for the partition's
        log if it is being opened now: a produce or a read right after a topic is created finds
        the log open rather than a retriable offline (which a client without retries would see)."""
        name = f"{topic}-{partition}"
        if self.opener.busy(name):
            await self.opener.wait(name, OPEN_WAIT_S)
        return self.led_replica(name, result, topic)

    def leader_replica(self, topic: str, partition: int, result: Any) -> Replica | None:
        """The replica if this SPU leads it; else fill ``result`` with the error and return None."""
        return self.led_replica(f"{topic}-{partition}", result, topic)

    def led_replica(self, name: str, result: Any, topic: str | None = None) -> Replica | None:
        replica = self.replicas.get(name)
        if replica is None and self.opener.busy(name):
            set_error(result, "offline", f"partition {name}'s log is being opened (or an older one deleted) on SPU "
                      f"{self.config.spu_id}; try again", None, True)
            return None
        if replica is None:
            meta = self.partitions.get(name)
            if meta is not None:
                leader = meta["status"].get("leader")
                set_error(result, "notLeader", f"partition {name} is not on SPU {self.config.spu_id}; SPU {leader} "
                          "leads it", self.spu_address(leader), True)
                return None
            topic = topic if topic is not None else name.rsplit("-", 1)[0]
            count = sum(1 for p in self.partitions.values() if p["spec"]["topic"] == topic)
            if count:
                set_error(result, "notFound", f"partition {name} does not exist: topic {topic} has partitions "
                          f"0-{count - 1}")
            else:
                # Unknown here; the SPU's metadata may lag a topic just created, so a retry may help.
                set_error(result, "notFound", f"partition {name}: topic {topic} is unknown to SPU "
                          f"{self.config.spu_id} (metadata version {self.metadata_version})", None, True)
            return None
        if replica.leader is None:
            alive = {i for i, o in self.spus.items() if o.get("status", {}).get("alive")}
            why = offline_reason(replica.meta.get("status", {}), replica.replicas, alive)
            set_error(result, "offline", f"partition {name} is {why}", None, True)
            return None
        if not replica.is_leader:
            set_error(result, "notLeader", f"SPU {self.config.spu_id} does not lead {name}; SPU {replica.leader} does",
                      self.spu_address(replica.leader), True)
            return None
        if replica.failure is not None:
            set_error(result, "notLeader", f"SPU {self.config.spu_id} no longer serves {name}: its disk failed "
                      f"({replica.failure}); another in-sync replica takes over if there is one", None, True)
            return None
        if replica.fenced:
            set_error(result, "notLeader", f"SPU {self.config.spu_id}'s epoch {replica.epoch} for {name} is stale: "
                      "a newer leader exists", None, True)
            return None
        return replica

    def rebuild_replica(self, failed: Replica, keep_log: bool) -> None:
        """Start a fenced replica again (core/spu/disk_faults.py): from an empty log when a live
        leader elsewhere holds every acknowledged record (it catches up and rejoins the in-sync
        set like a new replica), else from its own log reopened (recovery checks what is on
        disk), since it may hold the only copy."""
        name = failed.name
        self.stop_following(failed)
        if keep_log:
            self.store.close_log(name)
        else:
            self.store.delete_log(name)
        replica = self._new_replica(name, failed.incarnation)
        self.replicas[name] = replica
        failed.wake()
        meta = self.partitions.get(name)
        if meta is None:
            self._drop_replica(name)
        else:
            self._update_replica(name, meta)

    async def committed(self, replica: Replica, next_offset: int) -> None:
        """Wait until ``next_offset`` is durable here, then move the high watermark."""
        try:
            await replica.group.wait_durable(next_offset)
        except StorageError as e:
            self.disk.on_error(replica, e)  # a failed fsync fences the replica; never retried
            raise
        self.step(replica, Durable(replica.log.durable_offset))
        replica.wake()

    # ---------------------------------------------------------------- in-sync sets

    async def _isr_loop(self) -> None:
        """Tick every leader: its state decides whether to ask the SC to shrink or grow the set."""
        interval = max(0.05, min(1.0, self.config.replica_lag_max_ms / 4000))
        while True:
            await asyncio.sleep(interval)  # a period, not synchronisation
            now = now_ms()
            for replica in list(self.replicas.values()):
                if replica.state.leading:
                    try:
                        self.step(replica, Tick(now))
                    except Exception:  # noqa: BLE001 - one partition's failure must not stop the loop
                        log.exception("%s: in-sync check failed", replica.name)

    async def _request_isr(self, replica: Replica, request: RequestIsrChange) -> None:
        """Send ``request`` to the SC; its answer goes back to the replica's state."""
        isr, epoch = list(request.isr), request.epoch
        outcome: IsrOutcome = "unknown"
        try:
            async with asyncio.timeout(self.config.isr_request_timeout_s):
                await self.admin.update_isr(replica.name, isr, epoch, self.config.spu_id, list(request.based_on))
            outcome = "committed"
            self.metrics.on_isr_committed(request.based_on, request.isr)
        except (StaleEpochError, NotFoundError) as e:
            # The SC has moved on (a new leader or epoch): the state stops acknowledging until
            # the metadata tells us our new role.
            log.warning("%s: the SC refused in-sync set %s at epoch %d: %s", replica.name, isr, epoch, e)
            outcome = "stale"
        except VersionConflictError as e:
            # Computed from a set that changed meanwhile: dropped; the next round starts from
            # the set the metadata brings.
            log.info("%s: in-sync set change to %s not applied: %s", replica.name, isr, e)
            outcome = "conflict"
        except (KolkError, TimeoutError) as e:
            # Unknown whether it committed: the additions keep counting, and the next round asks again.
            why = e if str(e) else f"no answer within {self.config.isr_request_timeout_s:g} s"
            log.warning("%s: in-sync set change to %s not confirmed: %s", replica.name, isr, why)
        except Exception:  # noqa: BLE001 - an ISR round must never die silently
            log.exception("%s: in-sync set request failed", replica.name)
        try:
            self.step(replica, IsrChangeAnswered(request, outcome))
        except Exception:  # noqa: BLE001 - e.g. the log failed as the mark moved
            log.exception("%s: applying the in-sync answer failed", replica.name)

    def min_in_sync(self, replica: Replica) -> int:
        """The topic's effective min_in_sync (its own, the cluster default, else a majority),
        read when needed (topic and partition events may arrive in separate pushes)."""
        return self.lifecycle.topic_config(replica).min_in_sync
