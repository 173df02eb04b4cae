"""``kolk spu``: run one SPU process until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import os

from ..node.addresses import check_spu_addresses
from ..node.config_file import add_config_argument
from ..node.secret import SECRET_ENV, SecretError, cluster_secret
from ..node.serve import add_log_arguments, add_tls_arguments, serve_until_signalled, tls_from_args
from ..protocol.errors import KolkError
from ..smartmodule.limits import Limits
from .lifecycle import LifecycleConfig
from .config import SpuConfig
from .server import SpuServer
from .smartmodules import SmartModuleConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", type=int, required=True, help="this SPU's id, unique in the cluster")
    p.add_argument("--sc", required=True, help="SC admin address(es), comma-separated")
    p.add_argument("--data-dir", required=True, help="where the partition logs and their index live")
    p.add_argument("--public", required=True, help="address clients use, host:port")
    p.add_argument("--private", help="address other SPUs use (default: --public)")
    p.add_argument("--bind", help="bind here instead of --public (port 0: any free port)")
    p.add_argument("--rack", help="rack or zone, to spread replicas")
    p.add_argument("--replica-lag-max-ms", type=int, default=10_000,
                   help="a follower not caught up for this long leaves the in-sync set (default 10000)")
    p.add_argument("--replica-fetch-wait-ms", type=int, default=500,
                   help="how long a leader holds a follower's fetch when it has nothing new (default 500)")
    p.add_argument("--heartbeat-interval-ms", type=int, default=1000, help="heartbeats to the SC (default 1000)")
    p.add_argument("--shutdown-timeout-ms", type=int, default=10_000, metavar="MS",
                   help="on SIGTERM, hand this SPU's leaderships to other in-sync replicas for at most this long "
                        "before stopping (controlled shutdown; 0: stop at once; a second SIGTERM stops at once; "
                        "default 10000)")
    p.add_argument("--ready-file", help="write {address, pid} here once serving")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve /metrics (Prometheus) and /health over HTTP here "
                   "(port 0: any free one); with TLS, clients need a certificate of the cluster CA. Off when absent")
    p.add_argument("--secret-file", help=f"file holding the cluster secret, mode 0600 (else ${SECRET_ENV}): "
                                         "needed without TLS, where nodes prove it to each other")
    d = SmartModuleConfig()
    p.add_argument("--smartmodule-workers", type=int, default=d.workers, metavar="N",
                   help=f"threads that run SmartModule code, off the event loop (default {d.workers})")
    p.add_argument("--smartmodule-memory", type=int, default=d.memory_bytes >> 20, metavar="MiB",
                   help=f"memory all SmartModule instances and compiled modules may use together "
                        f"(default {d.memory_bytes >> 20})")
    p.add_argument("--smartmodule-fuel", type=int, default=d.limits.fuel_per_call, metavar="N",
                   help=f"fuel (about one per wasm instruction) per SmartModule call (default {d.limits.fuel_per_call})")
    p.add_argument("--smartmodule-wall-clock-ms", type=int, default=d.limits.wall_clock_ms, metavar="MS",
                   help=f"wall-clock limit per SmartModule call (default {d.limits.wall_clock_ms})")
    lc = LifecycleConfig()
    p.add_argument("--retention-interval-ms", type=int, default=lc.retention_interval_ms, metavar="MS",
                   help=f"how often retention checks every replica (also soon after a segment rolls; "
                        f"default {lc.retention_interval_ms})")
    p.add_argument("--cleaner-interval-ms", type=int, default=lc.cleaner_interval_ms, metavar="MS",
                   help=f"how often the cleaner looks for compacted topics' replicas to clean and erasures to "
                        f"carry out (default {lc.cleaner_interval_ms})")
    p.add_argument("--cleaner-bytes-per-s", type=int, default=lc.cleaner_bytes_per_s, metavar="N",
                   help=f"the most segment bytes the cleaner reads a second (default {lc.cleaner_bytes_per_s})")
    p.add_argument("--cleaner-key-map-mib", type=int, default=lc.cleaner_key_map_bytes >> 20, metavar="MiB",
                   help=f"memory for the cleaner's key map; more keys are cleaned in several passes "
                        f"(default {lc.cleaner_key_map_bytes >> 20})")
    add_tls_arguments(p, "the SPU")
    add_log_arguments(p)
    add_config_argument(p)  # read before the rest (core/node/config_file.py)


def lifecycle_config(args: argparse.Namespace) -> LifecycleConfig:
    """The retention and cleaner flags; ValueError naming the flag when one is out of range."""
    if not 1 <= args.cleaner_key_map_mib <= 16384:
        raise ValueError(f"--cleaner-key-map-mib must be from 1 to 16384, got {args.cleaner_key_map_mib}")
    return LifecycleConfig(retention_interval_ms=args.retention_interval_ms,
                           cleaner_interval_ms=args.cleaner_interval_ms,
                           cleaner_bytes_per_s=args.cleaner_bytes_per_s,
                           cleaner_key_map_bytes=args.cleaner_key_map_mib << 20)


def smartmodule_config(args: argparse.Namespace) -> SmartModuleConfig:
    """The --smartmodule-* flags; ValueError naming the flag when one is out of range."""
    if args.smartmodule_memory > 1 << 20:
        raise ValueError(f"--smartmodule-memory {args.smartmodule_memory} MiB is more than 1 TiB")
    try:
        limits = Limits(fuel_per_call=args.smartmodule_fuel, wall_clock_ms=args.smartmodule_wall_clock_ms)
    except ValueError:
        raise ValueError(f"--smartmodule-fuel must be at least 1000 and --smartmodule-wall-clock-ms at least 10 "
                         f"(given {args.smartmodule_fuel} and {args.smartmodule_wall_clock_ms})") from None
    return SmartModuleConfig(limits=limits, workers=args.smartmodule_workers,
                             memory_bytes=args.smartmodule_memory << 20)


def run_spu(args: argparse.Namespace) -> int:
    tls = tls_from_args(args, "kolk spu")
    try:
        secret = cluster_secret(args.secret_file)
    except SecretError as e:
        raise SystemExit(f"kolk spu: {e}") from None
    if tls is None and secret is None:
        raise SystemExit(f"kolk spu: without TLS this SPU needs the cluster secret (--secret-file or ${SECRET_ENV}) "
                         "to prove it is a node; or turn TLS on (--tls-ca, --tls-cert, --tls-key)")
    try:  # advertised addresses others can reach, listen addresses this host has (core/node/addresses.py)
        check_spu_addresses(args.public, args.private, args.bind, args.sc.split(","))
    except ValueError as e:
        raise SystemExit(f"kolk spu: {e}") from None
    try:
        config = SpuConfig(spu_id=args.id, data_dir=args.data_dir, sc_addresses=args.sc.split(","),
                           public_address=args.public, private_address=args.private, bind_address=args.bind,
                           rack=args.rack, ready_file=args.ready_file, metrics_address=args.metrics,
                           replica_lag_max_ms=args.replica_lag_max_ms,
                           replica_fetch_wait_ms=args.replica_fetch_wait_ms,
                           heartbeat_interval_ms=args.heartbeat_interval_ms, tls=tls, secret=secret,
                           shutdown_timeout_ms=args.shutdown_timeout_ms,
                           smartmodules=smartmodule_config(args), lifecycle=lifecycle_config(args),
                           unsafe_acks_for_tests=os.environ.get("KOLK_TEST_UNSAFE_ACKS") == "1")
    except ValueError as e:
        raise SystemExit(f"kolk spu: {e}") from None
    # SpuServer.start() creates the data directory (and its parents) once it can serve; a
    # listener it cannot bind or a private address that is not its own stops it first, with
    # one line on stderr and nothing left behind.
    try:
        return serve_until_signalled(lambda: SpuServer(config), args.log_level, data_dir=args.data_dir,
                                     node=f"spu-{args.id}", log_format=args.log_format)
    except KolkError as e:  # the SC refused it for good (another cluster secret, a TLS refusal)
        raise SystemExit(f"kolk spu: cannot join the cluster: {e}") from None
