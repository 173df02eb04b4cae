"""``kolk consumer list | describe | reset | delete``: consumer groups for operators
(docs/consumers.md "Operations"; the calls are core/client/groups_admin.py).

Human tables like ``kolk partition list``; ``--json`` prints the same as JSON. Every error is
one line on stderr and exit status 1; a bad group name is refused before anything is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from ..client import groups_admin as G
from ..client.admin import run
from ..client.client import AsyncClient
from ..protocol.errors import KolkError
from . import args as A
from .admin import _sc_option, _table, client_tls, resolve_sc

COMMANDS = ("consumer",)
ACTIONS = ("list", "describe", "reset", "delete")
TIMEOUT_S = 15.0  # each call to the cluster, retries included
MEMBER_ID_CHARS_SHOWN = 12  # member ids are long; the table shows their start (--json has them whole)


def add_commands(sub: Any) -> None:
    consumer = sub.add_parser("consumer", help="consumer groups: list, describe (lag), reset offsets, delete")
    csub = consumer.add_subparsers(dest="action", required=True)
    _sc_option(csub.add_parser("list", help="every consumer group with its state, members and coordinator"))
    d = csub.add_parser("describe", help="a group's members and, per partition, the committed offset, the log end "
                                         "(high watermark) and the lag")
    d.add_argument("group")
    _sc_option(d)
    r = csub.add_parser("reset", help="move a group's committed offsets for one topic (only while the group has "
                                      "no members)")
    r.add_argument("group")
    r.add_argument("--topic", required=True, help="the topic whose offsets move")
    r.add_argument("--partition", type=A.PARTITION, help="only this partition (default: every partition)")
    to = r.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true", help="to each partition's log start")
    to.add_argument("--to-latest", action="store_true", help="to each partition's end (high watermark)")
    to.add_argument("--to-offset", type=A.OFFSET, metavar="N", help="to offset N (refused where N is outside the "
                                                                    "partition's range)")
    to.add_argument("--to-timestamp", type=A.int_in(0, A.INT64_MAX), metavar="MS",
                    help="to the first record at or after MS milliseconds since the epoch")
    to.add_argument("--shift", type=A.int_in(-A.INT64_MAX, A.INT64_MAX), metavar="N",
                    help="by N from the committed offset (negative: back), clamped into the partition's range")
    r.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    _sc_option(r)
    x = csub.add_parser("delete", help="delete a group with no members, and its committed offsets")
    x.add_argument("group")
    _sc_option(x)


def reset_target(args: argparse.Namespace) -> G.ResetTarget:
    if args.to_earliest:
        return G.ResetTarget("earliest")
    if args.to_latest:
        return G.ResetTarget("latest")
    if args.to_offset is not None:
        return G.ResetTarget("offset", args.to_offset)
    if args.to_timestamp is not None:
        return G.ResetTarget("timestamp", args.to_timestamp)
    return G.ResetTarget("shift", args.shift)


def _short(member_id: str | None) -> str | None:
    if member_id is None or len(member_id) <= MEMBER_ID_CHARS_SHOWN:
        return member_id
    return member_id[:MEMBER_ID_CHARS_SHOWN] + "…"


def _parts(pairs: list[Any]) -> str:
    """[[topic, p], ...] as ``topic:0,1 other:3``."""
    by_topic: dict[str, list[int]] = {}
    for t, p in pairs:
        by_topic.setdefault(t, []).append(int(p))
    return " ".join(f"{t}:{','.join(str(p) for p in sorted(ps))}" for t, ps in sorted(by_topic.items())) or "-"


def _noted_table(rows: list[list[Any]], header: list[str]) -> str:
    """A table whose last column (NOTE) is left out when no row has a note."""
    if all(row[-1] is None for row in rows):
        return _table([row[:-1] for row in rows], header[:-1])
    return _table(rows, header)


def list_text(groups: list[dict[str, Any]]) -> str:
    if not groups:
        return "no consumer groups"
    return _table([[g.get("group"), g.get("state"), g.get("members"), g.get("coordinator")] for g in groups],
                  ["GROUP", "STATE", "MEMBERS", "COORDINATOR"])


def describe_text(d: G.GroupDescription) -> str:
    unknown = f" ({d.lag_unknown} partition(s) not known)" if d.lag_unknown else ""
    head = (f"group {d.group}: {d.state}, epoch {d.epoch}, assignor {d.assignor or '-'}, coordinator SPU "
            f"{d.coordinator if d.coordinator is not None else '-'}, {len(d.members)} member(s), total lag "
            f"{d.total_lag}{unknown}")
    parts = _noted_table([[p.topic, p.partition, p.committed, p.log_end, p.lag, _short(p.member_id),
                           p.client or None, p.error] for p in d.partitions],
                         ["TOPIC", "PARTITION", "COMMITTED", "LOG-END", "LAG", "MEMBER", "CLIENT", "NOTE"])
    out = [head, parts if d.partitions else "no partitions"]
    if d.members:
        out.append(_table([[_short(m.get("member_id")), m.get("instance_id") or None, m.get("client") or None,
                            ",".join(m.get("topics", [])) or None, _parts(m.get("assignment", [])),
                            m.get("last_heartbeat_ms_ago")] for m in d.members],
                          ["MEMBER", "INSTANCE", "CLIENT", "TOPICS", "ASSIGNED", "LAST-HEARTBEAT-MS"]))
    return "\n\n".join(out)


def reset_text(plan: G.ResetPlan, dry_run: bool) -> str:
    table = _noted_table([[r.topic, r.partition, r.current, r.new, r.log_start, r.high_watermark, r.note or None]
                          for r in plan.rows], ["TOPIC", "PARTITION", "CURRENT", "NEW", "LOG-START", "LOG-END", "NOTE"])
    if not dry_run:
        return f"{table}\ngroup {plan.group}: offsets of {plan.topic} reset {plan.target.flag()} " \
               f"({len(plan.rows)} partition(s))"
    tail = f"dry run ({plan.target.flag()}): nothing changed"
    if plan.active_members:
        tail += (f"; group {plan.group} has {plan.active_members} active member(s), so the reset itself would be "
                 "refused until they stop")
    return f"{table}\n{tail}"


def _show(args: argparse.Namespace, value: Any, text: str) -> None:
    print(json.dumps(value, indent=2, sort_keys=True) if args.json else text)


async def _run(args: argparse.Namespace) -> int:
    if args.action in ("describe", "reset", "delete"):
        G.checked_group(args.group)  # before any connection
    target = reset_target(args) if args.action == "reset" else None
    client = AsyncClient(resolve_sc(args.sc), timeout_s=TIMEOUT_S, tls=client_tls(args))
    try:
        if args.action == "list":
            groups = await client.group_list()
            _show(args, groups, list_text(groups))
        elif args.action == "describe":
            d = await client.group_describe(args.group)
            _show(args, d.to_dict(), describe_text(d))
        elif args.action == "reset":
            assert target is not None
            plan = await client.group_reset(args.group, args.topic, target, args.partition, dry_run=args.dry_run)
            _show(args, plan.to_dict(), reset_text(plan, args.dry_run))
        elif args.action == "delete":
            await client.group_delete(args.group)
            _show(args, {"deleted": args.group}, f"group {args.group} deleted, with its committed offsets")
    finally:
        await client.close()
    return 0


def dispatch(args: argparse.Namespace) -> int:
    try:
        return run(lambda: _run(args))
    except KolkError as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"kolk consumer {args.action}: {text}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):
        return 130
