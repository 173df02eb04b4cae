"""Authorization on every request, the same on the SC and on every SPU (DESIGN.md §7).

The order of checks: TLS identity (core/transport.py hands each connection its Peer) → region
(the policy maps the peer's address to regions) → policy (deny beats allow; with a policy in
force what no rule allows is denied) → masking (fields a role may not see) → SmartModules →
the log or the client. Without a policy everything is allowed (a fresh cluster is usable);
with TLS off every client is ``anonymous``.

The policy in force is the metadata object ``policy/active``; every node parses the same
source and enforces the same version, and never goes back to an older version. Denials go to
the audit log (core/node/audit.py) with who, what, from where, when and the deciding rule.

Node-only calls (``NODE_ONLY``) need a node peer: with TLS a node certificate, without TLS a
connection that proved the cluster secret (core/node/identity.py). Produce to ``_audit`` is
for node peers only, whatever the policy says; the SPU leading ``_audit`` also checks that
every record's ``node`` is the writer's own identity (core/node/audit.py ``forged_audit_records``).

Consumer groups (docs/policy.md, "Consumer groups") are the resource ``group:NAME`` with the
actions ``read``, ``describe`` and ``admin``; their denials are audited by :meth:`Authorizer.check`
like any other, and the coordinator records the changes an operator makes to a group (a reset,
a delete) with :meth:`Authorizer.audited_change`.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

from ..security.policy import Decision, Policy, PolicyError, policy_from_spec
from ..security.tls import Peer

log = logging.getLogger("kolk.authz")

AUDIT_TOPIC = "_audit"
NODE_ONLY = "node"  # pseudo-action: calls only nodes make (registration, heartbeats, replication)
INSECURE_POLICY_FLAG = "--insecure-allow-plaintext-policy"
GROUP_CHANGE = "group change"  # the reason of an audited change to a consumer group
AUDIT_DETAIL_CHARS_MAX = 8_192  # an audited change's detail, as JSON; longer is cut (detail_truncated)
POLICY_NEEDS_TLS = ("a policy needs TLS: this cluster runs without TLS, where every client is anonymous and a "
                    "policy protects nothing; start it with TLS (`kolk cluster start --tls`, or `kolk sc` and "
                    f"`kolk spu` with --tls-ca/--tls-cert/--tls-key), or start the SC with {INSECURE_POLICY_FLAG} "
                    "to apply it anyway (audited)")


class Denied(Exception):
    def __init__(self, decision: Decision, message: str) -> None:
        super().__init__(message)
        self.decision = decision


class Authorizer:
    def __init__(self, node: str, tls: bool, audit: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.node = node
        self.tls = tls  # with TLS on, node-only calls need a node certificate
        self.policy: Policy | None = None
        self.version = 0
        self.audit = audit
        # Every denial by action (node-only calls as "node", refused node authentications as
        # "authenticate"), audited or not: kolk_policy_denials_total on /metrics. Written on the
        # loop; a scrape copies it (list(d.items())).
        self.denials: dict[str, int] = {}

    # ---------------------------------------------------------------- the policy in force

    def on_policy(self, obj: dict[str, Any] | None) -> None:
        """A change of ``policy/active`` from the metadata (None: deleted, back to allow-all)."""
        if obj is None:
            self.policy, self.version = None, 0
            return
        spec = obj["spec"]
        version = int(spec.get("version", 0))
        if version < self.version:
            log.warning("policy version %d is older than the one in force (%d): ignored", version, self.version)
            return
        if self.policy is not None and spec.get("sha256") == self.policy.sha256:
            return  # the same policy delivered again
        try:
            self.policy = policy_from_spec(spec, self.version if self.policy is not None else 0)
        except (PolicyError, KeyError) as e:
            # apply refuses a policy that does not parse, so this is a bug or a newer format:
            # keep enforcing the last good one rather than open everything up.
            log.error("policy version %d cannot be enforced here, keeping version %d: %s", version, self.version, e)
            return
        self.version = version
        log.info("enforcing policy version %d", version)

    # ---------------------------------------------------------------- checks

    def check(self, peer: Peer, action: str, resource: str) -> None:
        """Raise Denied (and audit it) unless ``peer`` may do ``action`` on ``resource``."""
        if action == NODE_ONLY:
            if not peer.node:
                self._deny(peer, action, resource, Decision(False, None, f"{resource} is for cluster nodes only: "
                                                                          f"{self.not_a_node(peer)}"))
            return
        if resource == f"topic:{AUDIT_TOPIC}" and action == "produce":
            if peer.node:
                return  # nodes write the audit log (each record's node field is checked by the leader)
            self._deny(peer, action, resource, Decision(False, None, "only cluster nodes write the audit log, "
                                                                     "whatever the policy says"))
        if peer.node and (action == "describe" or (action == "consume" and resource == f"topic:{AUDIT_TOPIC}")):
            # A node already copies every replica (the replication API): describing anything and
            # reading the audit log grant it nothing new, and the SC's web console (issue 21) reads
            # groups and recent denials as its node, whatever the users' policy says.
            return
        if self.policy is None:
            return
        decision = self.policy.decide(peer.identity, peer.address, action, resource)
        if not decision.allowed:
            self._deny(peer, action, resource, decision)

    def not_a_node(self, peer: Peer) -> str:
        """Why ``peer`` is not a node, in words for a refusal."""
        if self.tls:
            return f"{peer.identity} has no node certificate"
        return f"{peer.identity} has not proved the cluster secret (without TLS nodes authenticate on connect)"

    def refuse_authentication(self, peer: Peer, node: str, why: str) -> str:
        """Log and audit a refused node authentication (core/node/identity.py); its one line."""
        node = node[:64]
        log.warning("refused node authentication from %s as %r: %s", peer.address or "?", node, why)
        self.record(peer, "authenticate", f"node:{node}", "deny", None, why)
        return f"{peer.identity} from {peer.address or '?'} may not authenticate as {node!r}: {why}"

    def allowed(self, peer: Peer, action: str, resource: str) -> bool:
        if self.policy is None:
            return True
        return self.policy.decide(peer.identity, peer.address, action, resource).allowed

    def masks(self, peer: Peer, topic: str) -> list[tuple[str, str]]:
        if self.policy is None:
            return []
        return list(self.policy.masks(peer.identity, peer.address, topic))

    def _deny(self, peer: Peer, action: str, resource: str, decision: Decision) -> None:
        message = (f"{peer.identity} from {peer.address or '?'} may not {action} {resource}: {decision.reason}"
                   f" (policy version {self.version})")
        self.record(peer, action, resource, "deny", decision.rule, decision.reason)
        raise Denied(decision, message)

    @property
    def auditing(self) -> bool:
        """A cluster with TLS or a policy in force keeps an audit log; a plaintext cluster with
        no policy (a dev cluster, where everyone is anonymous and allowed) does not."""
        return self.tls or self.policy is not None

    def record(self, peer: Peer, action: str, resource: str, decision: str, rule: int | None, reason: str,
               always: bool = False) -> None:
        """Queue an audit event; ``always``: even on a plaintext cluster without a policy (an
        operator's decision that weakens the cluster, e.g. a policy applied without TLS)."""
        if decision == "deny":
            self.denials[action] = self.denials.get(action, 0) + 1
        if self.audit is not None and (self.auditing or always):
            self.audit({"node": self.node, "identity": peer.identity, "address": peer.address, "action": action,
                        "resource": resource, "decision": decision, "rule": rule, "reason": reason,
                        "policy_version": self.version})

    def audited_change(self, peer: Peer, action: str, resource: str, detail: dict[str, Any]) -> None:
        """Record a change ``peer`` made (already allowed and done), in the shape of the SC's
        metadata-change records with ``reason`` "group change", the allowing rule, and ``detail``
        (JSON; cut to AUDIT_DETAIL_CHARS_MAX characters). For consumer groups: a reset (a commit
        with memberId "") and deleteGroup, as ``("admin", "group:NAME", {...})``."""
        if self.audit is None or not self.auditing:
            return
        rule = None
        if self.policy is not None:
            try:
                rule = self.policy.decide(peer.identity, peer.address, action, resource).rule
            except ValueError:
                rule = None  # not a request the policy decides (e.g. a node's own change)
        text = json.dumps(detail, sort_keys=True, default=str)  # plain JSON values (tuples, names: str)
        shown: Any = json.loads(text) if len(text) <= AUDIT_DETAIL_CHARS_MAX else {
            "detail_truncated": True, "chars": len(text), "head": text[:AUDIT_DETAIL_CHARS_MAX]}
        self.audit({"node": self.node, "identity": peer.identity, "address": peer.address, "action": action,
                    "resource": resource, "decision": "allow", "rule": rule, "reason": GROUP_CHANGE,
                    "detail": shown, "policy_version": self.version})
