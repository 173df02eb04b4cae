"""``kolk cluster sc add ID RAFT ADMIN`` and ``kolk cluster sc remove ID``: change the SC group
through Raft, one SC at a time (docs/operations.md "Adding and removing SCs")."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ..metadata.sc_ops import SC_ID_MAX
from . import args as A

SC_ID = A.int_in(1, SC_ID_MAX)


def add_commands(csub: Any, sc_option: Callable[[argparse.ArgumentParser], None]) -> None:
    sc = csub.add_parser("sc", help="add and remove SCs (the Raft group holding the metadata)")
    ssub = sc.add_subparsers(dest="sc_action", required=True)
    a = ssub.add_parser("add", help="make a running SC (started with `kolk sc --join`) a member, once it has "
                                    "caught up; refused if the SCs reachable would not be a majority")
    a.add_argument("id", type=SC_ID, help="the new SC's --id")
    a.add_argument("raft", metavar="RAFT_ADDRESS", help="its Raft address host:port, as the others reach it")
    a.add_argument("admin", metavar="ADMIN_ADDRESS", help="its admin address host:port, as clients reach it")
    sc_option(a)
    r = ssub.add_parser("remove", help="remove an SC from the group; refused if the SCs left and reachable would "
                                       "not be a majority")
    r.add_argument("id", type=SC_ID, help="the SC's id")
    sc_option(r)


async def run(args: argparse.Namespace, client: Any, show: Callable[[Any, str], None]) -> None:
    if args.sc_action == "add":
        members = await client.add_sc(args.id, args.raft, args.admin)
        what = f"SC {args.id} added"
    else:
        members = await client.remove_sc(args.id)
        what = f"SC {args.id} removed"
    show({"members": members}, f"{what}; SC members now: " + ", ".join(f"{m['id']} ({m['admin']})" for m in members))
