"""The policy's vocabulary: its actions, its kinds of resource, and which actions apply to which
kind (docs/policy.md). Pure.

Every action applies to topics, SmartModules and the cluster as it always did, except ``read``,
which is for consumer groups only; on a consumer group (``group:NAME``) only ``read``,
``describe`` and ``admin`` apply. A rule with an action that applies to none of its resources,
or a resource none of its actions applies to, would never apply there and is refused
(:func:`misfit`); a request of such a pair cannot be decided (security/policy.py
``check_request``).
"""

from __future__ import annotations

import json

ANYONE = "*"
ACTIONS = ("produce", "consume", "create", "delete", "describe", "alter", "use", "admin", "read")
RESOURCE_KINDS = ("topic", "smartmodule", "group", "cluster")
NAMED_KINDS = ("topic", "smartmodule", "group")  # written KIND:PATTERN (cluster is just "cluster")
GROUP_ACTIONS = ("read", "describe", "admin")  # the actions that apply to a consumer group
GROUP_ONLY_ACTIONS = ("read",)  # the actions that apply to nothing else
LISTED_MAX = 12  # resources or actions named in one refusal


def applies(action: str, kind: str) -> bool:
    """Whether ``action`` can be asked for on a resource of ``kind`` (``*``: every kind)."""
    if kind == ANYONE:
        return True
    return action in GROUP_ACTIONS if kind == "group" else action not in GROUP_ONLY_ACTIONS


def actions_on(kind: str) -> tuple[str, ...]:
    """The actions that apply to ``kind``, as refusals list them."""
    return GROUP_ACTIONS if kind == "group" else tuple(a for a in ACTIONS if applies(a, kind))


def resource_kind(pattern: str) -> str:
    """``topic`` of ``topic:PATTERN``; ``cluster`` and ``*`` are their own kinds."""
    return pattern if pattern in (ANYONE, "cluster") else pattern.partition(":")[0]


def _listed(items: tuple[str, ...]) -> str:
    more = f", ... ({len(items) - LISTED_MAX} more)" if len(items) > LISTED_MAX else ""
    return ", ".join(items[:LISTED_MAX]) + more


def misfit(actions: tuple[str, ...], resources: tuple[str, ...]) -> tuple[str, str, str] | None:
    """``(key, value, problem)`` for the first action of a rule that applies to none of its
    resources (key ``actions``), else the first resource none of its actions applies to (key
    ``resources``); None when every part of the rule can apply. ``*`` applies everywhere."""
    if ANYONE in actions:
        return None
    kinds = [resource_kind(p) for p in resources]
    for action in actions:
        if not any(applies(action, k) for k in kinds):
            if action in GROUP_ONLY_ACTIONS:
                return "actions", action, (f"{json.dumps(action)} applies only to consumer groups and this rule names "
                                           f"none ({_listed(resources)}): add a group:PATTERN resource (for a topic, "
                                           "consume is the action)")
            return "actions", action, (f"{json.dumps(action)} applies to no resource of this rule "
                                       f"({_listed(resources)}): on consumer groups the actions are "
                                       f"{', '.join(GROUP_ACTIONS)}")
    for pattern, kind in zip(resources, kinds):
        if not any(applies(a, kind) for a in actions):
            what = {"group": "a consumer group", "cluster": "the cluster"}.get(kind, f"a {kind}")
            return "resources", pattern, (f"{json.dumps(pattern)} is {what} and none of this rule's actions "
                                          f"({_listed(actions)}) applies to it (there: "
                                          f"{', '.join(actions_on(kind))}, or *)")
    return None
