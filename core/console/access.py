"""Who sees what in the console: the policy's ``describe``, applied to a cluster view (pure).

The console collects one :class:`~kolk.client.cluster_view.ClusterView` with the SC's own
credentials and cuts it down, per request, to what the viewer may see, asking the SC's own
policy engine (the same decisions its wire API makes, passed in as :class:`Gate`, since this
package never imports ``kolk.sc``). The rules are the wire API's (core/sc/api.py ``_may_see``):

* a topic: ``describe``, ``produce`` or ``consume`` on ``topic:NAME`` (each implies seeing it);
* a SmartModule: ``describe`` or ``use`` on ``smartmodule:NAME``;
* a consumer group: ``describe`` on ``group:NAME`` (as ``kolk consumer list``);
* the cluster (SCs, SPUs, racks, what could not be collected): ``describe`` on ``cluster``
  (as ``kolk cluster status``);
* the policy's source: ``admin`` on ``cluster`` (as ``kolk policy show``); its version is
  shown to everyone, as every denial already names it;
* recent denials: ``consume`` on ``topic:_audit`` (reading the audit log directly needs the same).

Lists silently leave out what the viewer may not see; a page about one topic or group the
viewer may not see is refused (403) with :meth:`Gate.check`, which audits the denial.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from ..client.cluster_view import AUDIT_TOPIC, ClusterView

TOPIC_SEEING = ("describe", "produce", "consume")
MODULE_SEEING = ("describe", "use")

# (action, resource) -> allowed, for one viewer (not audited: a list leaves things out silently).
Allowed = Callable[[str, str], bool]


Decide = Callable[[str, str, str, str], bool]  # (identity, address, action, resource) -> allowed


@dataclass(frozen=True)
class Gate:
    """The SC's policy engine, in-process. ``decider()`` returns the policy in force now as a
    pure decision (no trace, safe to call from a worker thread: a policy never changes once
    built); ``check(identity, address, action, resource)`` decides on the event loop and, when
    it denies, records the denial in the audit log and returns its one line (None: allowed)."""

    decider: Callable[[], Decide]
    check: Callable[[str, str, str, str], str | None]


def for_viewer(decide: Decide, identity: str, address: str) -> Allowed:
    return lambda action, resource: decide(identity, address, action, resource)


def allow_all(identity: str, address: str, action: str, resource: str) -> bool:
    return True


def never_denied(identity: str, address: str, action: str, resource: str) -> str | None:
    return None


OPEN = Gate(lambda: allow_all, never_denied)  # a console without a policy engine (unit tests)


def topic_resource(name: str) -> str:
    return f"topic:{name}"


def group_resource(name: str) -> str:
    return f"group:{name}"


def may_see_topic(allowed: Allowed, name: str) -> bool:
    return any(allowed(a, topic_resource(name)) for a in TOPIC_SEEING)


def may_see_module(allowed: Allowed, name: str) -> bool:
    return any(allowed(a, f"smartmodule:{name}") for a in MODULE_SEEING)


def may_see_group(allowed: Allowed, name: str) -> bool:
    return allowed("describe", group_resource(name))


@dataclass(frozen=True)
class Shown:
    """What one viewer may see of a view, and which parts were held back."""

    view: ClusterView  # only what the viewer may see (lists cut, hidden parts emptied)
    viewer: str  # the identity the console decided for ("anonymous" without TLS)
    cluster: bool  # may describe the cluster: SCs, SPUs, racks and collection errors are shown
    policy_source: bool  # may read the policy's source
    denials: bool  # may read the audit log's recent denials


def visible(view: ClusterView, viewer: str, allowed: Allowed) -> Shown:
    """``view`` cut down to what ``allowed`` lets ``viewer`` see (the rules at the top)."""
    topics = tuple(t for t in view.topics if may_see_topic(allowed, t.name))
    names = {t.name for t in topics}
    cluster = allowed("describe", "cluster")
    policy_source = allowed("admin", "cluster")
    denials = allowed("consume", topic_resource(AUDIT_TOPIC))
    cut = replace(
        view,
        scs=view.scs if cluster else (),
        leader_sc=view.leader_sc if cluster else None,
        spus=view.spus if cluster else (),
        racks=view.racks if cluster else (),
        topics=topics,
        partitions=tuple(p for p in view.partitions if p.topic in names),
        groups=tuple(g for g in view.groups if may_see_group(allowed, g.name)),
        modules=tuple(m for m in view.modules if may_see_module(allowed, m.name)),
        policy=view.policy if policy_source else replace(view.policy, source=None),
        denials=view.denials if denials else (),
        errors=view.errors if cluster else (),
    )
    return Shown(cut, viewer, cluster, policy_source, denials)
