"""``kolk sc``: run one SC process until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import os
import socket

from ..node.authz import INSECURE_POLICY_FLAG
from ..node.addresses import check_sc_addresses
from ..node.config_file import add_config_argument
from ..node.secret import SECRET_ENV, SecretError, cluster_secret
from ..node.serve import add_log_arguments, add_tls_arguments, serve_until_signalled, tls_from_args
from ..raft.node import RaftListenError
from .api import ScApi
from .server import ScConfig, ScPeer, ScServer
from .topic_defaults import parse_topic_defaults

# Test hook: append "path size" after every fsync, so a test can simulate power loss by
# cutting each file back to its last durable size. Off unless the variable is set.
FSYNC_LOG_ENV = "KOLK_TEST_FSYNC_LOG"


def _fsync_reporter(path: str):  # noqa: ANN202
    f = open(path, "a", buffering=1, encoding="utf-8")

    def report(name: str, size: int) -> None:
        f.write(f"{os.path.abspath(name)} {size}\n")

    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", type=int, required=True, help="this SC's id (a small integer, unique in the cluster)")
    p.add_argument("--data-dir", required=True, help="where the Raft journal, meta and snapshots live")
    p.add_argument("--raft", required=True, help="this SC's Raft address host:port, as the others reach it")
    p.add_argument("--admin", required=True, help="this SC's admin API address host:port, as clients reach it")
    p.add_argument("--peer", action="append", default=[], metavar="ID=RAFT/ADMIN",
                   help="another SC, e.g. 2=10.0.0.2:7000/10.0.0.2:9003 (repeat for each)")
    p.add_argument("--join", action="store_true",
                   help="a new SC joining a running cluster: list every current member with --peer; it starts no "
                        "election until `kolk cluster sc add` makes it a member (docs/operations.md)")
    p.add_argument("--bind-raft", help="bind Raft here instead of --raft (for proxies and NAT)")
    p.add_argument("--bind-admin", help="bind the admin API here instead of --admin (port 0: any free port)")
    p.add_argument("--secret-file", help=f"file holding the cluster secret, mode 0600 (else ${SECRET_ENV}); "
                                         "SPUs need the same secret on a cluster without TLS")
    p.add_argument(INSECURE_POLICY_FLAG, dest="insecure_allow_plaintext_policy", action="store_true",
                   help="store a policy although this cluster runs without TLS, where every client is anonymous "
                        "(audited); without it a policy needs TLS")
    p.add_argument("--heartbeat-timeout-ms", type=int, default=3000, help="SPU liveness timeout (default 3000)")
    p.add_argument("--replica-move-after-ms", type=int, default=300_000,
                   help="move the replicas of an SPU dead this long to other SPUs (default 300000)")
    p.add_argument("--auto-rebalance", action="store_true",
                   help="the SC leader plans a rebalance every 30 s and executes it when no move is in progress "
                        "(docs/rebalance.md; off by default)")
    p.add_argument("--leader-rebalance-interval-ms", type=int, default=30_000,
                   help="elect each partition's preferred (first) replica as leader when it is alive and in sync, "
                        "this often (default 30000; 0: never)")
    p.add_argument("--topic-default", action="append", default=[], metavar="KEY=VALUE",
                   help="a cluster-wide topic config default (repeat for each; keys as in `kolk topic create "
                        "--config`); the SC leader's flags are the ones in force")
    p.add_argument("--offsets-partitions", type=int, default=8,
                   help="partitions of _consumer_offsets, where consumer groups commit (default 8; fixed once created)")
    p.add_argument("--offsets-replication-factor", type=int, default=3,
                   help="replicas of each _consumer_offsets partition (default 3, or as many SPUs as are alive when "
                        "the first consumer group needs it)")
    p.add_argument("--ready-file", help="write {admin, pid} here once serving")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve /metrics (Prometheus) and /health over HTTP here "
                   "(port 0: any free one); with TLS, clients need a certificate of the cluster CA. Off when absent")
    p.add_argument("--console", metavar="HOST:PORT", help="serve the read-only web console over HTTP here (port 0: "
                   "any free one); with TLS, visitors need a certificate of the cluster CA and see what the policy "
                   "lets them describe. Off when absent")
    p.add_argument("--changelog-events", type=int, default=10_000,
                   help="metadata changes kept for watchers; one further behind gets a full sync")
    p.add_argument("--watchers-max", type=int, default=1_000,
                   help="metadata watches this SC serves at once (default 1000; every SPU holds one)")
    add_tls_arguments(p, "the admin listener")
    add_log_arguments(p)
    add_config_argument(p)  # read before the rest (core/node/config_file.py)


def _parse_peer(text: str) -> ScPeer:
    try:
        ident, addrs = text.split("=", 1)
        raft, admin = addrs.split("/", 1)
        return ScPeer(int(ident), raft, admin)
    except ValueError:
        raise SystemExit(f"kolk sc: --peer {text!r} must look like ID=RAFT_HOST:PORT/ADMIN_HOST:PORT") from None


def config_from_args(args: argparse.Namespace) -> ScConfig:
    try:
        secret = cluster_secret(args.secret_file) or ""
    except SecretError as e:
        raise SystemExit(f"kolk sc: {e}") from None
    if not secret:
        raise SystemExit(f"kolk sc: a cluster secret of at least 16 characters is required (--secret-file or "
                         f"${SECRET_ENV}); without one anyone reaching the Raft port could run code on this node")
    peers = {args.id: ScPeer(args.id, args.raft, args.admin)}
    for text in args.peer:
        peer = _parse_peer(text)
        if peer.node_id in peers:
            raise SystemExit(f"kolk sc: SC id {peer.node_id} appears twice")
        peers[peer.node_id] = peer
    try:
        topic_defaults = parse_topic_defaults(args.topic_default)
    except ValueError as e:
        raise SystemExit(f"kolk sc: {e}") from None
    try:
        on_sync = _fsync_reporter(os.environ[FSYNC_LOG_ENV]) if os.environ.get(FSYNC_LOG_ENV) else None
        return ScConfig(node_id=args.id, data_dir=args.data_dir, peers=peers, secret=secret,
                        bind_raft=args.bind_raft, bind_admin=args.bind_admin,
                        heartbeat_timeout_ms=args.heartbeat_timeout_ms,
                        replica_move_after_ms=args.replica_move_after_ms, ready_file=args.ready_file,
                        auto_rebalance=args.auto_rebalance,
                        leader_rebalance_interval_ms=args.leader_rebalance_interval_ms,
                        metrics_address=args.metrics, console_address=args.console,
                        changelog_events=args.changelog_events, watchers_max=args.watchers_max,
                        tls=tls_from_args(args, "kolk sc"),
                        insecure_allow_plaintext_policy=args.insecure_allow_plaintext_policy, join=args.join,
                        topic_defaults=topic_defaults, on_sync=on_sync,
                        offsets_partitions=args.offsets_partitions,
                        offsets_replication_factor=args.offsets_replication_factor)
    except ValueError as e:
        raise SystemExit(f"kolk sc: {e}") from None


def _check_can_listen(address: str, what: str, flag: str | None = None) -> None:
    """Exit with one line unless ``address`` can be listened on now: bind, listen, close.

    The admin listener is bound in ScServer.start(), after Raft has started and created the
    data directory; this check runs before either, so the usual mistake (a port already
    taken) leaves nothing behind. A process that takes the port between this check and the
    real bind is still caught there (ScServer.start), with the same line."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's create_server
            s.bind((host, int(port)))
            s.listen(1)
    except (OSError, ValueError, OverflowError) as e:
        reason = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)).lower()
        named = f" ({flag})" if flag else ""  # the flag that gave it, as the config file may have
        raise SystemExit(f"kolk sc: cannot listen for {what} on {address}{named}: {reason}") from None


def run_sc(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:  # advertised addresses others can reach, listen addresses this host has (core/node/addresses.py)
        check_sc_addresses(args.raft, args.admin, args.bind_raft, args.bind_admin,
                           [(p.raft_address, p.admin_address) for p in config.peers.values() if p.node_id != args.id])
    except ValueError as e:
        raise SystemExit(f"kolk sc: {e}") from None
    # Every listener is checked (admin) or bound (Raft, in RaftNode) before the data directory
    # is created: a process that cannot serve stops at once, with one line, leaving nothing.
    _check_can_listen(config.bind_admin or config.me.admin_address, "admin",
                      "--bind-admin" if config.bind_admin else "--admin")
    if config.metrics_address is not None:
        _check_can_listen(config.metrics_address, "metrics")
    if config.console_address is not None:
        _check_can_listen(config.console_address, "console")
    try:
        return serve_until_signalled(lambda: ScServer(config, ScApi), args.log_level, data_dir=args.data_dir,
                                     node=f"sc-{args.id}", log_format=args.log_format)
    except RaftListenError as e:
        flag = "--bind-raft" if config.bind_raft else "--raft"
        raise SystemExit(f"kolk sc: cannot listen for raft on {e.address} ({flag}): {e.reason}") from None
