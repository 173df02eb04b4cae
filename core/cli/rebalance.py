"""``kolk partition rebalance [--execute [--throttle N] [--wait] | --cancel]`` and ``kolk cluster spu drain
ID [--wait] [--undo]`` (docs/rebalance.md), and the moves in progress that ``kolk partition
list`` and ``kolk cluster status`` show.

``rebalance`` without ``--execute`` prints the plan and changes nothing; ``drain`` marks the SPU
and executes the plan that empties it. ``--wait`` shows progress (one line whenever the moves
in progress change) until no move is left — and for a drain until the SPU holds nothing — or
``--timeout`` seconds pass.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, Callable

from ..client.admin import AdminClient
from ..metadata.move_ops import THROTTLE_MAX
from ..protocol.errors import KolkError
from . import args as A

THROTTLE = A.int_in(1, THROTTLE_MAX)
WAIT_TIMEOUT = A.float_in(1, 7 * 24 * 3600.0)
POLL_S = 0.5  # how often --wait asks the SC (a poll period, not synchronisation)


def add_partition_commands(psub: Any, sc_option: Callable[[argparse.ArgumentParser], None]) -> None:
    r = psub.add_parser("rebalance", help="plan moves that even replicas and preferred leaders per SPU and rack and "
                                          "empty draining SPUs; prints the plan, --execute starts it")
    how = r.add_mutually_exclusive_group()
    how.add_argument("--execute", action="store_true", help="start the moves (each copies at --throttle bytes/s)")
    how.add_argument("--cancel", action="store_true", help="cancel every move in progress (each partition back to "
                                                          "the replicas it started from)")
    r.add_argument("--throttle", type=THROTTLE, help="bytes/s each moving replica copies at (default: the SC's, "
                                                     "10 MiB/s)")
    _wait_flags(r)
    sc_option(r)


def add_spu_commands(ssub: Any, sc_option: Callable[[argparse.ArgumentParser], None]) -> None:
    d = ssub.add_parser("drain", help="move every replica off an SPU (mark it draining and execute the plan)")
    d.add_argument("id", type=A.SPU_ID)
    d.add_argument("--undo", action="store_true", help="no longer draining (moves already started go on)")
    d.add_argument("--throttle", type=THROTTLE, help="bytes/s each moving replica copies at")
    _wait_flags(d)
    sc_option(d)


def _wait_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true", help="show progress until the moves are done")
    p.add_argument("--timeout", type=WAIT_TIMEOUT, default=3600.0, help="with --wait: give up after this many "
                                                                        "seconds (default 3600)")


def moves_table(moves: list[dict[str, Any]]) -> str:
    return "\n".join(f"  {m['partition']}: {_ids(m['from'])} -> {_ids(m['to'])}" for m in moves)


def moving_lines(moving: list[dict[str, Any]]) -> str:
    """The moves in progress, one line each (``kolk cluster status``, ``kolk partition list``)."""
    return "\n".join(f"  {m['partition']}: {_ids(m['from'])} moving to {_ids(m['to'])}"
                     + (f", waiting for SPU {_ids(m['waiting'])} to catch up" if m["waiting"] else ", finishing")
                     for m in moving)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _ids(ids: list[int] | None) -> str:
    return ",".join(str(i) for i in ids or [])


def _describe(plan: dict[str, Any], executed: bool) -> str:
    lines = []
    if plan["moves"]:
        lines.append(("moves started:" if executed else "plan (run with --execute to start it):") + "\n"
                     + moves_table(plan["moves"]))
    elif not plan["moving"]:
        lines.append("balanced: nothing to move")
    for r in plan["refused"]:
        lines.append(f"  {r['partition']}: refused: {r['message']}")
    if plan["moving"]:
        lines.append("moves in progress:\n" + moving_lines(plan["moving"]))
    return "\n".join(lines)


async def _wait(client: AdminClient, timeout_s: float, spu: int | None, throttle: int | None = None) -> None:
    """For a drain (``spu``), a move started before it (another drain's, a rebalance's) may still
    be adding the SPU to a partition the drain's plan had to leave out (the planner skips moving
    partitions): once no move is left and the SPU still holds replicas, plan and execute again."""
    deadline = time.monotonic() + timeout_s
    shown = None
    refused: set[tuple[str, str]] = set()
    while True:
        status = await client.cluster_status()
        moving = status.get("moving", [])
        holding = []
        if spu is not None:
            holding = [p["name"] for p in await client.list_objects("partition") if spu in p["spec"]["replicas"]]
        line = (_count(len(moving), "move") + " in progress"
                + (f"; SPU {spu} holds {_count(len(holding), 'replica')}" if spu is not None else ""))
        if line != shown:
            print(line + ("\n" + moving_lines(moving) if moving else ""), flush=True)
            shown = line
        if not moving and not holding:
            return
        if spu is not None and not moving:
            plan = await client.rebalance(execute=True, throttle=throttle)
            for r in plan["refused"]:
                if (r["partition"], r["message"]) not in refused:
                    refused.add((r["partition"], r["message"]))
                    print(f"  {r['partition']}: refused: {r['message']}", flush=True)
            if plan["started"]:
                print(f"SPU {spu} still holds {', '.join(holding)}: moves started:\n" + moves_table(
                    [m for m in plan["moves"] if m["partition"] in plan["started"]]), flush=True)
                shown = None
                continue
        if time.monotonic() > deadline:
            raise KolkError(f"the moves did not finish within {timeout_s:g} s: {line}")
        await asyncio.sleep(POLL_S)


async def run(args: argparse.Namespace, client: AdminClient, show: Callable[[Any, str], None]) -> None:
    if args.command == "partition" and args.cancel:
        plan = await client.rebalance(cancel=True)
        show(plan, "\n".join([f"cancelled: {', '.join(plan['started']) or 'no move was in progress'}"]
                             + [f"  {r['partition']}: refused: {r['message']}" for r in plan["refused"]]))
        return
    if args.command == "partition":
        plan = await client.rebalance(execute=args.execute, throttle=args.throttle)
        show(plan, _describe(plan, args.execute))
        if args.wait and args.execute:
            await _wait(client, args.timeout, None)
        return
    plan = await client.drain_spu(args.id, undo=args.undo)
    if args.undo:
        show(plan, f"SPU {args.id} is no longer draining")
        return
    plan = await client.rebalance(execute=True, throttle=args.throttle)
    show(plan, f"SPU {args.id} is draining\n" + _describe(plan, True))
    if args.wait:
        await _wait(client, args.timeout, args.id, args.throttle)
