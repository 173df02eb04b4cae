"""Who may read the policy, and the lockout guard of ``kolk policy apply`` (docs/policy.md).

Pure functions for core/sc/api.py. Reading a policy object needs ``admin`` on ``cluster``,
like changing it. A caller who may not read it is told that one exists (and the version, which
every denial already names) but never its source: "no policy" would be a lie that says
everything is allowed. Storing ``policy/active`` is refused when the new policy, decided by
the same engine every node enforces (security/policy.py ``decide``), would deny the applying
identity, from its connection's address, ``admin`` on ``cluster``: nobody with that
certificate could change the policy again. ``allowLockout`` in the request accepts that.
"""

from __future__ import annotations

from ..security.policy import Policy, decide

ALLOW_LOCKOUT_FLAG = "--allow-lockout"  # kolk policy apply; the request's allowLockout


def hidden_policy(name: str, identity: str, denied: str) -> str:
    """The one line for a caller who may not read ``policy/NAME`` that exists; ``denied`` is
    the authorizer's refusal (who, from where, why, the policy version)."""
    what = "a policy is in force" if name == "active" else f"the policy object {name!r} exists"
    return f"{what} but {identity} may not read it (denied: {denied})"


def hidden_policies(count: int, identity: str, denied: str) -> str:
    """The one line for a caller who may not list ``count`` existing policy objects."""
    return f"{count} policy object(s) exist but {identity} may not read them (denied: {denied})"


def lockout(policy: Policy, identity: str, address: str) -> str | None:
    """Why storing ``policy`` would lock ``identity`` at ``address`` out of changing it again;
    None when the policy still lets it ``admin`` on ``cluster``."""
    d = decide(policy, identity, address, "admin", "cluster")
    if d.allowed:
        return None
    return (f"policy version {policy.version} would deny {identity} from {address or '?'} admin on cluster "
            f"({d.reason}): you could not change it again; add {identity} to a role with admin on cluster, "
            f"or pass {ALLOW_LOCKOUT_FLAG}")


def lockout_accepted(identity: str) -> str:
    """The audit reason of a policy applied with ``allowLockout``."""
    return f"applied with {ALLOW_LOCKOUT_FLAG}: {identity} may no longer admin cluster"
