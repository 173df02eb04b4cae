"""Whether an SC membership change may go ahead: pure decisions, no I/O (docs/operations.md,
"Adding and removing SCs").

The rule is Raft's single-server change, applied so that no change can leave the group
without a majority it can actually reach:

* **remove**: the members that remain and are connected to the leader now (the leader
  included) must be a majority of the new, smaller group. Removing the last member is refused;
  removing the leader is done by the leader handing its leadership over first.
* **add**: pysyncobj has no non-voting learners, so the new SC counts toward the new group's
  majority as soon as the change is appended. It is added only when it is reachable now (both
  its Raft address answers a TCP connect and its admin address answers as that SC, checked at
  the edge), and the members connected to the
  leader plus the new SC must be a majority of the new group. Until the new SC has caught up,
  a group whose old members alone are not a majority of the new size (1 -> 2, or 3 -> 4 with
  one old member down) commits only once the new SC has the log; the leader waits for that
  catch-up before it answers.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..metadata.sc_ops import SC_ID_MAX, SC_MEMBERS_MAX, ScMember
from ..metadata.specs import SpecError, check_address


@dataclass(frozen=True)
class Refusal(Exception):
    """A change that may not happen: the wire error code, one line, and whether to retry."""

    code: str
    message: str
    retriable: bool = False

    def __str__(self) -> str:
        return self.message


def majority(size: int) -> int:
    return size // 2 + 1


def _ids(members: tuple[ScMember, ...]) -> str:
    return ", ".join(str(m.id) for m in members)


def new_member(ident: int, raft: str, admin: str) -> ScMember:
    """The SC an `add` names, checked: id in range, both addresses host:port."""
    if not 1 <= ident <= SC_ID_MAX:
        raise Refusal("invalidArgument", f"SC id {ident} must be 1-{SC_ID_MAX}")
    try:
        return ScMember(ident, check_address(raft, "raft address"), check_address(admin, "admin address"))
    except SpecError as e:
        raise Refusal("invalidArgument", f"SC {ident}: {e}") from None


def plan_add(members: tuple[ScMember, ...], new: ScMember, connected: frozenset[int]) -> tuple[ScMember, ...]:
    """The member list after adding ``new``, or a Refusal. ``connected``: the ids of the
    members the leader reaches now, the leader included; ``new`` was found reachable."""
    for m in members:
        if m.id == new.id:
            raise Refusal("alreadyExists", f"SC {new.id} is already a member (raft {m.raft}, admin {m.admin})")
        if m.raft == new.raft:
            raise Refusal("alreadyExists", f"raft address {new.raft} is already SC {m.id}'s")
        if m.admin == new.admin:
            raise Refusal("alreadyExists", f"admin address {new.admin} is already SC {m.id}'s")
    if len(members) >= SC_MEMBERS_MAX:
        raise Refusal("limitExceeded", f"the cluster has {len(members)} SCs, the most it may have")
    live = len(connected & {m.id for m in members}) + 1
    need = majority(len(members) + 1)
    if live < need:
        raise Refusal("notEnoughReplicas", f"adding SC {new.id} would need {need} of {len(members) + 1} SCs to "
                                           f"commit, but only {live} (SCs {_ids(members)} connected: "
                                           f"{sorted(connected)}, plus SC {new.id}) are reachable")
    return tuple(sorted(members + (new,)))


def plan_remove(members: tuple[ScMember, ...], ident: int, connected: frozenset[int],
                voters: frozenset[int] = frozenset()) -> tuple[ScMember, ...]:
    """The member list after removing SC ``ident``, or a Refusal (``connected`` as in plan_add).

    ``voters``: the ids of the SCs in Raft's own configuration. One of them that the list no
    longer names is what a removal cut short between its two steps (the list committed, then
    the leader died or Raft's step timed out) leaves behind: removing it again finishes the Raft
    step (the list stays as it is), under the same majority rule."""
    if not any(m.id == ident for m in members):
        if ident in voters:
            live = len(connected & {m.id for m in members})
            if live < majority(len(members)):
                raise Refusal("notEnoughReplicas", f"removing SC {ident} (left out of the list, still a Raft voter) "
                                                   f"needs {majority(len(members))} of SCs {_ids(members)} connected, "
                                                   f"but only {live} are")
            return members
        raise Refusal("notFound", f"SC {ident} is not a member (members: {_ids(members)})")
    if len(members) == 1:
        raise Refusal("invalidArgument", f"SC {ident} is the last member; a cluster needs at least one SC")
    rest = tuple(m for m in members if m.id != ident)
    live = len(connected & {m.id for m in rest})
    need = majority(len(rest))
    if live < need:
        down = sorted({m.id for m in rest} - connected)
        raise Refusal("notEnoughReplicas", f"removing SC {ident} would leave {len(rest)} SCs needing {need} to "
                                           f"commit, but only {live} of them are connected (down: {down})")
    return rest
