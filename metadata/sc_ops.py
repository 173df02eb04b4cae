"""The SC member list in the replicated state: ``set_sc_members`` (docs/operations.md, "Adding
and removing SCs").

Raft's own configuration (pysyncobj's node set) knows only Raft addresses; every SC also needs
each member's id and admin address, to forward writes to the leader and to list the SCs in
``kolk cluster status``. That list is the ``config`` object ``sc-members``, written only by this
command, so an SC restarted with stale ``--peer`` flags still learns the current members. The
SC leader seeds it from its flags once and then rewrites it on every ``kolk cluster sc add`` /
``remove`` (core/sc/sc_membership.py); apply checks the list is well-formed and, when the
command carries ``based_on`` (the list it was planned from; null: none yet), that the committed
list is still that one: two changes planned on two leaders around a leader change must not
silently undo each other (each writes a whole list).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .command import INVALID_ARGUMENT, VERSION_CONFLICT, Applied, Edit, fail, get_field, get_ts
from .objects import CONFIG, State
from .specs import SpecError, check_address

SC_MEMBERS_NAME = "sc-members"  # the config object holding the list
SC_MEMBERS_MAX = 7  # Raft groups beyond 7 voters only slow commits down
SC_ID_MAX = 1_000_000


@dataclass(frozen=True, order=True)
class ScMember:
    """One SC of the Raft group: its id, the Raft address the others reach it on, and the admin
    address clients reach it on."""

    id: int
    raft: str
    admin: str

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "raft": self.raft, "admin": self.admin}


def check_members(raw: Any) -> tuple[ScMember, ...]:
    """The members a command or the state holds, sorted by id; ValueError names what is wrong."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= SC_MEMBERS_MAX:
        raise ValueError(f"members must be a list of 1-{SC_MEMBERS_MAX} SCs")
    out: list[ScMember] = []
    for m in raw:
        if not isinstance(m, Mapping) or set(m) != {"id", "raft", "admin"}:
            raise ValueError("each member is {id, raft, admin}")
        ident = m["id"]
        if not isinstance(ident, int) or isinstance(ident, bool) or not 1 <= ident <= SC_ID_MAX:
            raise ValueError(f"SC id {ident!r} must be 1-{SC_ID_MAX}")
        try:
            out.append(ScMember(ident, check_address(m["raft"], "raft address"),
                                check_address(m["admin"], "admin address")))
        except SpecError as e:
            raise ValueError(f"SC {ident}: {e}") from None
    for what in ("id", "raft", "admin"):
        values = [getattr(m, what) for m in out]
        if len(set(values)) != len(values):
            raise ValueError(f"two SCs share the same {what}")
    return tuple(sorted(out))


def members_of(state: State) -> tuple[ScMember, ...] | None:
    """The replicated member list; None until the leader has seeded it."""
    obj = state.get(CONFIG, SC_MEMBERS_NAME)
    return None if obj is None else check_members(list(obj.spec.get("members", [])))


def _set_sc_members(state: State, cmd: Mapping[str, Any]) -> Applied:
    ts = get_ts(cmd)
    try:
        members = check_members(get_field(cmd, "members", list))
    except ValueError as e:
        raise fail(INVALID_ARGUMENT, f"set_sc_members: {e}") from None
    if "based_on" in cmd:  # compare-and-set: the list the change was planned from
        try:
            based_on = None if cmd["based_on"] is None else check_members(cmd["based_on"])
        except ValueError as e:
            raise fail(INVALID_ARGUMENT, f"set_sc_members: based_on: {e}") from None
        if based_on != members_of(state):
            raise fail(VERSION_CONFLICT, "set_sc_members: the SC member list changed since this change was planned; "
                                         "retry it")
    current = state.get(CONFIG, SC_MEMBERS_NAME)
    spec = {"members": [m.to_dict() for m in members]}
    edit = Edit(state)
    if current is None or dict(current.spec) != spec:
        edit.put(CONFIG, SC_MEMBERS_NAME, spec, {"changed_ms": ts})
    return edit.finish(ts, {"members": spec["members"]})


SC_OPS: Mapping[str, Callable[[State, Mapping[str, Any]], Applied]] = {"set_sc_members": _set_sc_members}
