"""Admin commands of the ``kolk`` CLI: ``topic``, ``partition list``, ``cluster status``, ``cluster spu``,
``cluster diagnostics`` (core/cli/diagnostics.py).

Each talks to any SC (``--sc`` or ``$KOLK_SC``, comma-separated for several). Errors print
one line naming what was wrong and exit with status 1; ``--json`` prints machine output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..client.admin import AdminClient, run
from . import args as A
from . import cluster_sc, rebalance, topic_lifecycle
from ..metadata.specs import PartitionSpec, PartitionStatus, SpuSpec, SpuStatus
from ..protocol.errors import KolkError, NotFoundError
from ..security.tls import TlsConfig
from ..security.tls_files import TlsFileError, check_tls_files

SC_ENV = "KOLK_SC"
DEFAULT_SC = "127.0.0.1:9003"
COMMANDS = ("topic", "partition", "cluster")


def _sc_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sc", default=None,
                   help=f"SC admin address(es), comma-separated (default: ${SC_ENV}, else the running local "
                        f"cluster's; {DEFAULT_SC} only when there is no local cluster profile)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--tls-ca", default=None, help="CA certificate to trust: turns TLS on (default: $KOLK_TLS_CA, "
                                                  "else the local cluster's profile)")
    p.add_argument("--tls-cert", default=None, help="client certificate (default: $KOLK_TLS_CERT); given with "
                                                    "--tls-key, it wins over the local cluster's, whose CA it "
                                                    "trusts without --tls-ca")
    p.add_argument("--tls-key", default=None, help="client private key (default: $KOLK_TLS_KEY)")


def client_tls(args: argparse.Namespace) -> TlsConfig | None:
    """TLS for a CLI client: the options, else $KOLK_TLS_*, else a local cluster started --tls.

    A certificate and key given always win: without --tls-ca they trust the local cluster's CA
    (from its profile), and with neither a CA given nor a local TLS cluster they are refused,
    never ignored. A certificate without its key, or a key without its certificate, is refused
    in every case (docs/operations.md "Client TLS options")."""
    from ..client.profile import profile_ca, profile_tls

    ca = getattr(args, "tls_ca", None) or os.environ.get("KOLK_TLS_CA")
    cert = getattr(args, "tls_cert", None) or os.environ.get("KOLK_TLS_CERT")
    key = getattr(args, "tls_key", None) or os.environ.get("KOLK_TLS_KEY")
    try:
        check_tls_files(None, cert, key)  # first: a cert without its key (or the reverse), named
        if not ca and cert:
            ca = profile_ca()
            if not ca:
                raise KolkError("--tls-cert and --tls-key need --tls-ca as well (no local cluster started with "
                                "--tls to take the CA from)")
        if not ca:
            if getattr(args, "sc", None) or os.environ.get(SC_ENV):
                return None  # an explicit SC without TLS options: plaintext
            return profile_tls()
        check_tls_files(ca, cert, key)
    except TlsFileError as e:
        raise KolkError(str(e)) from None
    return TlsConfig(ca, cert, key)


def add_commands(sub: Any) -> None:
    topic = sub.add_parser("topic", help="create, list, describe, alter, grow and delete topics; erase a key")
    tsub = topic.add_subparsers(dest="action", required=True)
    c = tsub.add_parser("create", help="create a topic")
    c.add_argument("name")
    c.add_argument("-p", "--partitions", type=A.PARTITIONS, default=1,
                   help=f"partitions (default 1; at most {A.PARTITIONS_MAX})")
    c.add_argument("-r", "--replication", type=A.REPLICATION_FACTOR, default=1,
                   help=f"replication factor (default 1; at most {A.REPLICATION_FACTOR_MAX})")
    c.add_argument("--config", action="append", default=[], metavar="KEY=VALUE",
                   help="a topic config key (repeatable; docs/metadata.md lists the keys)")
    _sc_option(c)
    for name, helptext in (("list", "list topics"),
                           ("describe", "show a topic, every effective config value and its source, and its "
                                        "partitions"),
                           ("delete", "delete a topic")):
        a = tsub.add_parser(name, help=helptext)
        if name != "list":
            a.add_argument("name")
        _sc_option(a)
    topic_lifecycle.add_commands(tsub, _sc_option)

    partition = sub.add_parser("partition", help="partitions: leader, replicas, in-sync set, offsets, lag")
    psub = partition.add_subparsers(dest="action", required=True)
    pl = psub.add_parser("list", help="every partition with its leader, replicas, in-sync set, high watermark, "
                                      "log end offset and the lag of its slowest follower; then every replica "
                                      "with its role, log start, log end, bytes on disk and segments (--json: "
                                      "also its high watermark and the cleaner's cleaned_offset)")
    pl.add_argument("--topic", help="only this topic's partitions")
    _sc_option(pl)
    pe = psub.add_parser("elect", help="elect a leader now: a live in-sync replica, or with --unclean any live "
                                       "replica, giving up what only the in-sync replicas had")
    pe.add_argument("name", help="the partition, TOPIC-N")
    pe.add_argument("--leader", type=A.SPU_ID, help="the SPU to lead (default: the first eligible)")
    pe.add_argument("--unclean", action="store_true",
                    help="accept data loss: let a replica outside the in-sync set lead (audited)")
    _sc_option(pe)
    rebalance.add_partition_commands(psub, _sc_option)  # core/cli/rebalance.py

    cluster = sub.add_parser("cluster", help="cluster status and SPU registration")
    csub = cluster.add_subparsers(dest="action", required=True)
    _sc_option(csub.add_parser("status", help="SCs, which one leads, SPUs and their liveness"))
    dg = csub.add_parser("diagnostics", help="write one archive (tar.gz, 0600) of every node's logs, metrics, "
                                             "versions and settings and the metadata, secrets and keys redacted")
    from .diagnostics import add_arguments as diagnostics_arguments

    diagnostics_arguments(dg)
    _sc_option(dg)
    st = csub.add_parser("start", help="start a local cluster (1 SC, N SPUs) in the background")
    st.add_argument("--spus", type=A.LOCAL_SPUS, default=1,
                    help=f"SPUs to start (default 1; at most {A.LOCAL_SPUS_MAX})")
    st.add_argument("--tls", action="store_true", help="make a dev CA and certificates and turn mutual TLS on for "
                                                       "every listener; the CLI uses the admin certificate by itself")
    st.add_argument("--insecure-allow-plaintext-policy", action="store_true",
                    help="without --tls: let the SC store a policy anyway (audited); every client is anonymous, "
                         "so such a policy protects nothing")
    st.add_argument("--log-format", choices=("text", "json"), default="text",
                    help="the nodes' log lines (in the logs directory): text (default) or json, one object a line")
    st.add_argument("--json", action="store_true")
    sp = csub.add_parser("stop", help="stop the local cluster started by 'kolk cluster start'")
    sp.add_argument("--json", action="store_true")

    spu = csub.add_parser("spu", help="register, list and unregister SPUs")
    ssub = spu.add_subparsers(dest="spu_action", required=True)
    r = ssub.add_parser("register", help="register an SPU by id and address")
    r.add_argument("--id", type=A.SPU_ID, required=True)
    r.add_argument("--public", required=True, help="address clients use, host:port")
    r.add_argument("--private", help="address other SPUs use (default: --public)")
    r.add_argument("--rack")
    _sc_option(r)
    _sc_option(ssub.add_parser("list", help="list SPUs"))
    u = ssub.add_parser("unregister", help="unregister an SPU that holds no replicas")
    u.add_argument("--id", type=A.SPU_ID, required=True)
    _sc_option(u)
    rebalance.add_spu_commands(ssub, _sc_option)  # drain (core/cli/rebalance.py)
    cluster_sc.add_commands(csub, _sc_option)  # sc add|remove (core/cli/cluster_sc.py)


def _print(args: argparse.Namespace, value: Any, text: str) -> None:
    print(json.dumps(value, indent=2, sort_keys=True) if args.json else text)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def _ids(ids: list[int]) -> str:
    return ",".join(str(i) for i in ids)


def resolve_sc(explicit: str | None) -> str:
    """--sc, else $KOLK_SC, else the running local cluster's SC, else (no profile at all)
    127.0.0.1:9003. A local cluster whose profile says it is stopped is an error, never a
    quiet fall back to an address another cluster may be listening on."""
    from ..client.profile import LocalClusterStoppedError, profile_sc

    if explicit or os.environ.get(SC_ENV):
        return explicit or os.environ[SC_ENV]
    try:
        return profile_sc() or DEFAULT_SC
    except LocalClusterStoppedError:
        raise LocalClusterStoppedError("pass --sc HOST:PORT") from None


async def _run(args: argparse.Namespace) -> int:
    client = AdminClient(resolve_sc(args.sc), tls=client_tls(args))
    if args.command == "topic":
        if args.action in topic_lifecycle.ACTIONS:
            await topic_lifecycle.run(args, client, lambda value, text: _print(args, value, text))
        elif args.action == "create":
            config = topic_lifecycle.config_flags(args.config, args.name)
            topic = await client.create_topic(args.name, args.partitions, args.replication, config)
            _print(args, topic, f"topic {args.name} created with {args.partitions} partition(s), "
                                f"replication factor {args.replication}")
        elif args.action == "list":
            topics = await client.list_topics()
            # Counts only: a topic stored before the config table may hold keys it no longer knows.
            _print(args, topics, _table([[t["name"], t["spec"].get("partitions"), t["spec"].get("replication_factor"),
                                          t["status"].get("state")] for t in topics],
                                        ["TOPIC", "PARTITIONS", "REPLICATION", "STATE"]))
        elif args.action == "describe":
            t = await client.describe_topic(args.name)
            spec = topic_lifecycle.typed_topic(t)
            effective = await topic_lifecycle.effective_config(client, t)
            t["effective_config"] = {k: {"value": v, "source": src} for k, v, src in effective}
            rows = []
            for p in t["partitions"]:
                status = PartitionStatus.from_dict(p["status"])
                rows.append([p["name"], status.leader, list(PartitionSpec.from_dict(p["spec"]).replicas),
                             list(status.isr), status.epoch])
            _print(args, t, f"topic {t['name']}: {spec.partitions} partition(s), replication factor "
                            f"{spec.replication_factor}, version {t['version']}\n"
                            + _table([list(row) for row in effective], ["CONFIG", "VALUE", "SOURCE"]) + "\n"
                            + _table(rows, ["PARTITION", "LEADER", "REPLICAS", "IN-SYNC", "EPOCH"]))
        elif args.action == "delete":
            await client.delete_topic(args.name)
            _print(args, {"deleted": args.name}, f"topic {args.name} deleted")
    elif args.command == "partition" and args.action == "list":
        from ..client.client import AsyncClient
        from ..client.partition_status import human_bytes

        c = AsyncClient(resolve_sc(args.sc), timeout_s=10, tls=client_tls(args))
        try:
            rows = await c.partition_list(args.topic)
            if not rows and args.topic and await c.admin.get_object("topic", args.topic) is None:
                raise NotFoundError(f"topic {args.topic} does not exist")
        finally:
            await c.close()
        # Two tables: one row per partition (its leader's view), then one per replica (its own log).
        parts = _table([[r["name"], r["leader"], _ids(r["replicas"]), _ids(r["isr"]), r["epoch"],
                         r["high_watermark"], r["log_end_offset"], r["lag"], r["error"]] for r in rows],
                       ["PARTITION", "LEADER", "REPLICAS", "IN-SYNC", "EPOCH", "HW", "LEO", "LAG", "NOTE"])
        replicas = _table([[r["name"], g["spu"], g["role"], "yes" if g["in_sync"] else "no", g["log_start_offset"],
                            g["log_end_offset"], human_bytes(g["size_bytes"]), g["segments"], g["error"]]
                           for r in rows for g in r["replica_logs"]],
                          ["PARTITION", "SPU", "ROLE", "IN-SYNC", "LOG-START", "LOG-END", "BYTES", "SEGMENTS",
                           "NOTE"])
        moving = [m for m in (await client.cluster_status()).get("moving", [])
                  if not args.topic or m["partition"].rsplit("-", 1)[0] == args.topic]
        if moving:
            replicas += "\n\nmoves in progress:\n" + rebalance.moving_lines(moving)
        _print(args, rows, f"{parts}\n\n{replicas}" if rows else "no partitions")
    elif (args.command == "partition" and args.action == "rebalance") or (
            args.command == "cluster" and args.action == "spu" and args.spu_action == "drain"):
        await rebalance.run(args, client, lambda value, text: _print(args, value, text))
    elif args.command == "partition" and args.action == "elect":
        leader, epoch = await client.elect_leader(args.name, args.leader, args.unclean)
        what = "unclean election: records only the in-sync replicas had are given up; " if args.unclean else ""
        _print(args, {"partition": args.name, "leader": leader, "epoch": epoch, "unclean": args.unclean},
               f"{args.name}: {what}SPU {leader} leads at epoch {epoch}")
    elif args.command == "cluster" and args.action == "spu":
        if args.spu_action == "register":
            await client.register_spu(args.id, args.public, args.private, args.rack)
            _print(args, {"registered": args.id}, f"SPU {args.id} registered at {args.public}")
        elif args.spu_action == "list":
            spus = await client.list_objects("spu")
            rows = []
            for u in spus:
                spec, status = SpuSpec.from_dict(u["spec"]), SpuStatus.from_dict(u["status"])
                rows.append([spec.id, spec.public_address, spec.rack, "alive" if status.alive else "DOWN"])
            _print(args, spus, _table(rows, ["SPU", "ADDRESS", "RACK", "STATUS"]))
        elif args.spu_action == "unregister":
            await client.unregister_spu(args.id)
            _print(args, {"unregistered": args.id}, f"SPU {args.id} unregistered")
    elif args.command == "cluster" and args.action == "sc":
        await cluster_sc.run(args, client, lambda value, text: _print(args, value, text))
    elif args.command == "cluster" and args.action == "diagnostics":
        from .diagnostics import run as diagnostics

        return await diagnostics(args, resolve_sc(args.sc), client_tls(args), lambda v, text: _print(args, v, text))
    elif args.command == "cluster" and args.action == "status":
        s = await client.cluster_status()
        text = (f"SC leader: {s['leader'] or 'none (no quorum?)'}  metadata version {s['metadata_version']}\n"
                + _table([[sc["id"], sc["admin"], sc["raft"], "leader" if sc["leader"] else "follower",
                           "yes" if sc["reachable"] else "NO"] for sc in s["scs"]],
                         ["SC", "ADMIN", "RAFT", "ROLE", "REACHABLE"])
                + "\n" + (_table([[u["id"], u["public_address"], u["rack"], ("alive" if u["alive"] else "DOWN")
                                   + (", draining" if u.get("draining") else "")]
                                  for u in s["spus"]], ["SPU", "ADDRESS", "RACK", "STATUS"]) if s["spus"]
                          else "no SPUs registered")
                + ("\nmoves in progress:\n" + rebalance.moving_lines(s["moving"]) if s.get("moving") else "")
                + (f"\nSC {s['self']} is not a member of the SC group (joining, or removed: docs/operations.md)"
                   if s.get("member") is False else ""))
        console = _local_console(s)
        if console:
            s, text = {**s, "console": console}, text + f"\nweb console: {console}"
        metrics = _local_metrics(s)
        if metrics:
            s, text = {**s, "metrics": metrics}, text + "\nmetrics: " + "  ".join(f"{n} {u}" for n, u in metrics.items())
        _print(args, s, text)
    return 0


def _local_console(status: dict[str, Any]) -> str | None:
    """The web console's URL when ``status`` is the running local cluster's (its profile has it)."""
    from ..client.profile import read_profile

    profile = read_profile()
    if not profile or not profile.get("running") or not profile.get("console"):
        return None
    return profile["console"] if any(sc.get("admin") == profile.get("sc") for sc in status.get("scs", ())) else None


def _local_metrics(status: dict[str, Any]) -> dict[str, str]:
    """Each node's /metrics URL when ``status`` is the running local cluster's (docs/metrics.md)."""
    from ..client.profile import read_profile

    profile = read_profile()
    if not profile or not profile.get("running") or not profile.get("metrics"):
        return {}
    if not any(sc.get("admin") == profile.get("sc") for sc in status.get("scs", ())):
        return {}
    scheme = "https" if profile.get("tls") else "http"
    return {node: f"{scheme}://{address}/metrics" for node, address in profile["metrics"].items()}


def dispatch(args: argparse.Namespace) -> int:
    from . import local_cluster

    try:
        if args.command == "cluster" and args.action == "start":
            profile = local_cluster.start(args.spus, tls=args.tls,
                                          insecure_allow_plaintext_policy=args.insecure_allow_plaintext_policy,
                                          log_format=args.log_format)
            if profile.get("tls") and not args.tls and not profile.get("restarted"):
                print(f"kolk cluster start: the local cluster in {profile['data_dir']} was created with --tls: "
                      "started with TLS again", file=sys.stderr)
            if profile.get("restarted"):
                _print(args, profile, f"local cluster running: SC at {profile['sc']}; started again "
                                      f"{', '.join(profile['restarted'])} (it had exited; see {profile['logs']})")
                return 0
            _print(args, profile, f"local cluster started: SC at {profile['sc']}, {profile['spus']} SPU(s)\n"
                                  f"data in {profile['data_dir']}, logs in {profile['logs']}\n"
                                  + (f"web console at {profile['console']}\n" if profile.get("console") else "") +
                                  "stop it with: kolk cluster stop")
            return 0
        if args.command == "cluster" and args.action == "stop":
            out = local_cluster.stop()
            _print(args, out, "local cluster stopped" + (f" (killed after timeout: {', '.join(out['killed'])})"
                                                          if out["killed"] else ""))
            return 0
        return run(lambda: _run(args))
    except KolkError as e:
        print(f"kolk {args.command} {args.action}: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:
        # Local files: cluster start's dev certificates (CertificateError, a ValueError: a
        # broken pki/ca.key) and directories (a $KOLK_HOME that cannot be created). Remote
        # errors are KolkErrors, above; elsewhere these are bugs and keep their traceback.
        # A closed stdout is main's to handle (quietly).
        if args.command != "cluster" or args.action not in ("start", "stop") or isinstance(e, BrokenPipeError):
            raise
        what = f"{e.filename}: {e.strerror or e}" if isinstance(e, OSError) and e.filename else str(e)
        print(f"kolk {args.command} {args.action}: {what.splitlines()[0] if what else type(e).__name__}",
              file=sys.stderr)
        return 1
