"""An SPU's settings (``kolk spu`` flags become these; core/spu/main.py): addresses, limits,
replication timings, TLS and the cluster secret, SmartModule and lifecycle settings, and the
test-only switches. Checked when made: a bad value is a ValueError naming it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..observe.http import parse_listen_address
from ..protocol import limits as L
from ..protocol.fair_use import FairUseLimits
from ..protocol.limits import FETCH_BYTES_MAX, PRODUCE_BYTES_MAX, STREAM_WINDOW_BYTES_MAX
from ..protocol.node_auth import NodeCredential
from ..security.tls import TlsConfig
from .lifecycle import LifecycleConfig
from .shutdown import SHUTDOWN_TIMEOUT_MS_MAX
from .smartmodules import SmartModuleConfig

IGNORE_STORAGE_ID_ENV = "KOLK_TEST_IGNORE_STORAGE_ID"


@dataclass
class SpuConfig:
    spu_id: int
    data_dir: str
    sc_addresses: list[str]
    public_address: str
    private_address: str | None = None
    bind_address: str | None = None  # default: the public address
    rack: str | None = None
    heartbeat_interval_ms: int = 1_000
    # SIGTERM: hand leaderships over for at most this long before stopping; 0: stop at once
    # (controlled shutdown, core/spu/shutdown.py).
    shutdown_timeout_ms: int = 10_000
    produce_bytes_max: int = PRODUCE_BYTES_MAX
    fetch_bytes_max: int = FETCH_BYTES_MAX
    stream_window_bytes_max: int = STREAM_WINDOW_BYTES_MAX
    stream_push_bytes_max: int = 1 << 20
    # Fair use (core/protocol/fair_use.py, docs/security.md "Fair use"): streams and unread
    # pushed bytes per identity (TLS identity, or client address without TLS) and in all.
    streams_max: int = L.STREAMS_PER_SERVER_MAX
    streams_per_identity_max: int = L.STREAMS_PER_IDENTITY_MAX
    held_bytes_max: int = L.HELD_BYTES_PER_SERVER_MAX
    held_bytes_per_identity_max: int = L.HELD_BYTES_PER_IDENTITY_MAX
    connections_per_identity_max: int = L.CONNECTIONS_PER_IDENTITY_MAX
    produce_timeout_ms_max: int = 60_000
    stream_keepalive_ms: int = 5_000  # an idle stream sends an empty push this often (core/spu/stream.py)
    # Replication (docs/replication.md).
    replica_lag_max_ms: int = 10_000  # a follower not caught up for this long leaves the in-sync set
    replica_fetch_wait_ms: int = 500  # how long a leader holds a follower's fetch when it has nothing
    replica_fetch_bytes: int = 4 << 20
    replica_call_timeout_s: float = 5.0
    isr_request_timeout_s: float = 10.0
    tls: TlsConfig | None = None  # TLS on the listener and on this SPU's own connections (node certificate)
    # The cluster secret (core/node/secret.py): without TLS, node-only calls to and from this SPU
    # prove it (core/node/identity.py); kolk spu refuses to start a plaintext SPU without one.
    secret: str | None = field(default=None, repr=False)
    # TEST ONLY (KOLK_TEST_UNSAFE_ACKS=1): answer acks=all once the leader has fsynced, before the
    # high watermark passes: the deliberately broken build the fault harness must catch.
    unsafe_acks_for_tests: bool = False
    # TEST ONLY (KOLK_TEST_IGNORE_STORAGE_ID=1): followers truncate below their high watermark
    # when a leader says so, the data-losing behaviour before issue 15 (the SC ignores storage
    # ids under the same switch); the fault harness must catch it under disk-wipe.
    ignore_storage_id_for_tests: bool = field(
        default_factory=lambda: os.environ.get(IGNORE_STORAGE_ID_ENV) == "1")
    disk_check_interval_ms: int = 1_000  # how often the watchdog probes the data directory
    # Below this much free space the data directory counts as failing (replicas fenced, nothing rebuilt).
    disk_free_bytes_min: int = 4 << 20
    ready_file: str | None = None
    metrics_address: str | None = None  # --metrics: serve /metrics and /health here (off when None)
    # SmartModules: worker threads, memory budget, per-call limits (core/spu/smartmodules.py).
    smartmodules: SmartModuleConfig = field(default_factory=SmartModuleConfig)
    # Retention and the cleaner (core/spu/lifecycle.py).
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)

    @property
    def credential(self) -> NodeCredential | None:
        """What this SPU's own connections prove on a plaintext cluster (None with TLS)."""
        if self.tls is not None or not self.secret:
            return None
        return NodeCredential(f"spu-{self.spu_id}", self.secret)

    def __post_init__(self) -> None:
        if self.heartbeat_interval_ms < 50:
            raise ValueError("heartbeat_interval_ms must be at least 50")
        if not 0 <= self.shutdown_timeout_ms <= SHUTDOWN_TIMEOUT_MS_MAX:
            raise ValueError(f"--shutdown-timeout-ms must be from 0 to {SHUTDOWN_TIMEOUT_MS_MAX}, "
                             f"got {self.shutdown_timeout_ms}")
        if self.stream_push_bytes_max > self.stream_window_bytes_max:
            raise ValueError("stream_push_bytes_max must not exceed stream_window_bytes_max")
        if self.replica_lag_max_ms < 4 * self.replica_fetch_wait_ms:
            raise ValueError("replica_lag_max_ms must be at least 4 x replica_fetch_wait_ms")
        if not 1 << 16 <= self.replica_fetch_bytes <= self.fetch_bytes_max:
            raise ValueError("replica_fetch_bytes must be from 64 KiB to fetch_bytes_max")
        if self.metrics_address is not None:
            parse_listen_address(self.metrics_address)  # InvalidAddressError (a ValueError) names it
        if not 10 <= self.disk_check_interval_ms <= 60_000:
            raise ValueError("disk_check_interval_ms must be from 10 to 60000")
        self.fair_use_limits()  # ValueError naming the bad limit

    def fair_use_limits(self) -> FairUseLimits:
        return FairUseLimits(self.streams_per_identity_max, self.streams_max, self.held_bytes_per_identity_max,
                             self.held_bytes_max, self.connections_per_identity_max)
