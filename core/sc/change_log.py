"""The SC's INFO lines for metadata changes (docs/operations.md, Logs): one line per change,
naming the object, who asked and the metadata version it made. Pure: the words only; the SC
logs them where the change succeeded.

Where: an operator's change (topics, policies, SmartModules, SPU membership) is logged by the
SC that served the admin request, once it is committed (core/sc/api.py ``_changed``) - one
line per change, on the node the request reached, not one per SC (every SC applies every
command; N identical lines would say nothing more). A controller's change (a partition's
leader, an SPU's liveness) is logged by the SC leader that proposed it (core/sc/server.py).
"""

from __future__ import annotations

from typing import Any

from ..metadata.objects import PARTITION, State

_DONE = {"create": "created", "delete": "deleted", "alter": "altered", "admin": "changed", "put": "stored"}


def admin_change_line(action: str, resource: str, identity: str, address: str, version: int | None) -> str:
    """``topic orders created by alice from 10.0.0.5 (metadata version 17)``.

    ``resource`` as the authorizer names it: ``topic:orders``, ``topic:orders partitions 4``
    (grown), ``policy:active v3``, ``smartmodule:upper@1.0.0``; ``action`` one of create,
    delete, alter, put (a stored object written)."""
    kind, _, name = resource.partition(":")
    what = f"{kind} {name}" if name else kind
    if " partitions " in name:
        topic, _, count = name.partition(" partitions ")
        text = f"{kind} {topic} grown to {count} partitions"
    elif kind == "policy" and action != "delete":
        text = f"{what} applied"
    else:
        text = f"{what} {_DONE.get(action, action)}"
    who = identity + (f" from {address}" if address else "")
    at = f" (metadata version {version})" if version is not None else ""
    return f"{text} by {who}{at}"


def controller_line(before: State, cmd: dict[str, Any], outcome: dict[str, Any], version: int) -> str | None:
    """The line for a controller's command, or None for those not logged here (replica moves
    and topic defaults have their own lines in core/sc/server.py)."""
    op = cmd.get("op")
    if op == "set_spu_status":
        state = "alive again" if cmd.get("alive") else "down (no heartbeat in time)"
        result = "" if outcome.get("ok") else f": not applied: {outcome.get('message', '')}"
        return f"SPU {cmd.get('id')} is {state}, by the controller (metadata version {version}){result}"
    if op == "elect_leader":
        name = cmd.get("partition", "?")
        p = before.get(PARTITION, name)
        old = p.status.get("leader") if p is not None else None
        new = cmd.get("leader")
        was = f"SPU {old}" if old is not None else "none"
        if not outcome.get("ok"):
            return f"{name}: electing a leader failed: {outcome.get('message', '')}"
        if new is None:
            return (f"{name}: offline: no live in-sync replica to lead (was {was}), by the controller "
                    f"(metadata version {version})")
        return (f"{name}: leader SPU {new} (was {was}), in-sync {cmd.get('isr')}, by the controller "
                f"(metadata version {version})")
    return None
