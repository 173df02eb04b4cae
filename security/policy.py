"""The policy engine: who may do what, on which resource, from where (DESIGN.md §7).

Pure: a :class:`Policy` is built from a policy file's text (docs/policy.md is the format,
security/policy_parse.py reads it) and answers :meth:`Policy.decide` and :meth:`Policy.masks`
from its arguments alone. The caller brings the identity (TLS), the peer's address, the
action and the resource; the engine maps the address to regions, the identity to roles, and:

* a matching ``deny`` rule denies, whatever allows it (deny beats allow);
* else a matching ``allow`` rule allows;
* else the request is denied by default (with a policy in force).

Without a policy, everything is allowed for everyone: ``Policy.allow_all()``, or
``decide(None, ...)``. A rule names resources by glob (``*`` any run of characters, ``?`` one),
and nothing in a *name* is ever special. A client whose address is not an IP address has no
known region: region conditions then never let an allow rule apply and always let a deny rule
(and a mask) apply, so an unknown place never gains anything.

``decide`` runs on every request: globs are compiled once, rules are indexed by action, and
decisions are kept in a bounded LRU cache (a policy never changes; a new version is a new
:class:`Policy`).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from .jsonmask import mask_json
from .policy_kinds import GROUP_ACTIONS, NAMED_KINDS, actions_on, applies
from .policy_parse import (ACTIONS, ANONYMOUS, ANYONE, MaskSpec, PolicyError, PolicySpec, RuleSpec, glob_regex,
                           has_wildcard, parse_spec)

__all__ = ["ACTIONS", "ANONYMOUS", "GROUP_ACTIONS", "Decision", "Policy", "PolicyError", "PolicyStatistics",
           "check_request", "decide", "mask_json", "parse_address", "parse_policy", "parse_resource",
           "policy_from_spec"]

DECISIONS_CACHED_MAX = 65_536
MASKS_CACHED_MAX = 16_384
IDENTITIES_CACHED_MAX = 16_384
ADDRESSES_CACHED_MAX = 16_384
REASON_CHARS_MAX = 300


@dataclass(frozen=True)
class Decision:
    """The answer to one request: allowed or not, the rule that decided (None: no rule, the
    default), and a sentence saying why."""

    allowed: bool
    rule: int | None
    reason: str


@dataclass(frozen=True)
class PolicyStatistics:
    version: int
    rules: int
    masks: int
    decisions_cached: int
    decision_hits: int
    decision_misses: int


class _Globs:
    """A set of glob patterns, compiled once: exact names in a set, the rest in one regex."""

    __slots__ = ("anything", "exact", "wild", "_regex")

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        self.anything = ANYONE in patterns
        self.exact = frozenset(p for p in patterns if not has_wildcard(p))
        self.wild = tuple(p for p in patterns if has_wildcard(p) and p != ANYONE)
        self._regex: Callable[[str], Any] | None = None  # compiled when first needed

    def match(self, name: str) -> bool:
        if self.anything or name in self.exact:
            return True
        if not self.wild:
            return False
        if self._regex is None:
            self._regex = re.compile("|".join(f"(?:{glob_regex(p)})" for p in self.wild)).match
        return self._regex(name) is not None


class _Who:
    """The roles and identities a rule or mask is for."""

    def __init__(self, roles: tuple[str, ...], identities: tuple[str, ...]) -> None:
        self.anyone = ANYONE in roles or ANYONE in identities
        self.roles = _Globs(roles)
        self.identities = _Globs(identities)

    def matched(self, identity: str, roles: tuple[str, ...]) -> str | None:
        if self.anyone:
            return "anyone"
        if self.identities.match(identity):
            return f"identity {identity}"
        for role in roles:
            if self.roles.match(role):
                return f"role {role}"
        return None


class _Where:
    """A rule's region conditions; ``regions`` None means the client's address is unknown."""

    def __init__(self, inside: tuple[str, ...] | None, outside: tuple[str, ...]) -> None:
        self.inside = None if inside is None else frozenset(inside)
        self.outside = frozenset(outside)
        self.outside_order = outside

    def matched(self, regions: tuple[str, ...] | None, address: str, restricts: bool) -> str | None:
        """Why the condition holds (a phrase), or None. ``restricts``: a deny rule or a mask,
        which apply when the place is unknown; an allow rule does not."""
        if self.inside is None and not self.outside:
            return " from anywhere"
        if regions is None:
            return f" from {address or '?'!r}, not an IP address (region unknown)" if restricts else None
        if self.inside is not None:
            hit = next((r for r in regions if r in self.inside), None)
            if hit is None:
                return None
        if self.outside and any(r in self.outside for r in regions):
            return None
        if self.inside is not None:
            return f" from region {hit}"
        return f" from {address} (outside {', '.join(self.outside_order)})"


class _Rule:
    __slots__ = ("number", "deny", "title", "who", "where", "any_resource", "resources")

    def __init__(self, spec: RuleSpec) -> None:
        self.number = spec.number
        self.deny = spec.effect == "deny"
        title = f"{spec.effect} {', '.join(spec.actions)} on {', '.join(spec.resources)}"
        if len(title) > REASON_CHARS_MAX // 2:
            title = title[: REASON_CHARS_MAX // 2 - 3] + "..."
        self.title = f"rule {spec.number} ({title})"
        self.who = _Who(spec.roles, spec.identities)
        self.where = _Where(spec.regions, spec.not_regions)
        self.any_resource = ANYONE in spec.resources
        by_kind: dict[str, list[str]] = {}
        for r in spec.resources:
            if r == "cluster":
                by_kind.setdefault("cluster", []).append(ANYONE)
            elif r != ANYONE:
                kind, _, pattern = r.partition(":")
                by_kind.setdefault(kind, []).append(pattern)
        self.resources = {kind: _Globs(patterns) for kind, patterns in by_kind.items()}

    def covers(self, kind: str, name: str) -> bool:
        if self.any_resource:
            return True
        globs = self.resources.get(kind)
        return globs is not None and globs.match(name)


class _Index:
    """The rules of one action and one effect, found by who they are for: a request looks only
    at the rules for anyone, for its identity, for one of its roles, or with a pattern."""

    def __init__(self, rules: list[_Rule]) -> None:
        self.general: list[_Rule] = []  # for anyone, or naming a role or identity by pattern
        self.by_role: dict[str, list[_Rule]] = {}
        self.by_identity: dict[str, list[_Rule]] = {}
        for rule in rules:
            who = rule.who
            if who.anyone or who.roles.wild or who.identities.wild:
                self.general.append(rule)
                continue
            for role in who.roles.exact:
                self.by_role.setdefault(role, []).append(rule)
            for identity in who.identities.exact:
                self.by_identity.setdefault(identity, []).append(rule)

    def candidates(self, identity: str, roles: tuple[str, ...]) -> list[_Rule]:
        """A superset of the rules for this identity, in file order."""
        found = {r.number: r for r in self.general}
        for r in self.by_identity.get(identity, ()):
            found[r.number] = r
        for role in roles:
            for r in self.by_role.get(role, ()):
                found[r.number] = r
        return [found[n] for n in sorted(found)]


class _Mask:
    __slots__ = ("who", "where", "topics", "fields")

    def __init__(self, spec: MaskSpec) -> None:
        self.who = _Who(spec.roles, spec.identities)
        self.where = _Where(spec.regions, spec.not_regions)
        self.topics = _Globs(spec.topics)
        self.fields = tuple((path, spec.replacement) for path in spec.fields)


def parse_address(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's IP address (IPv4-mapped IPv6 as IPv4; ``[...]`` brackets allowed), or None."""
    if not isinstance(address, str):
        return None
    text = address.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def parse_resource(resource: str) -> tuple[str, str]:
    """``(kind, name)`` of ``topic:NAME``, ``smartmodule:NAME``, ``group:NAME`` or ``cluster``;
    ValueError else."""
    if resource == "cluster":
        return "cluster", ""
    kind, sep, name = resource.partition(":")
    if not sep or not name or kind not in NAMED_KINDS:
        raise ValueError(f"{resource!r} is not a resource (topic:NAME, smartmodule:NAME, group:NAME or cluster)")
    return kind, name


def check_request(action: str, resource: str) -> tuple[str, str]:
    """``(kind, name)`` of a request that can be decided; ValueError naming what is wrong for an
    unknown action or resource, or an action that does not apply to the resource's kind
    (``read`` on a topic, ``consume`` on a group)."""
    if action not in ACTIONS:
        raise ValueError(f"{action!r} is not an action (one of {', '.join(ACTIONS)})")
    kind, name = parse_resource(resource)
    if not applies(action, kind):
        there = ", ".join(actions_on(kind))
        raise ValueError(f"{action!r} does not apply to {resource!r} (on a {kind}: {there})")
    return kind, name


class Policy:
    """A checked policy, ready to decide. Build one with :func:`parse_policy` or
    :meth:`allow_all`; it never changes (a new version of the file is a new Policy)."""

    def __init__(self, spec: PolicySpec | None) -> None:
        self.spec = spec
        self.allows_all = spec is None
        self._decide_cached = functools.lru_cache(maxsize=DECISIONS_CACHED_MAX)(self._decide)
        self._masks_cached = functools.lru_cache(maxsize=MASKS_CACHED_MAX)(self._masks)
        self._roles = functools.lru_cache(maxsize=IDENTITIES_CACHED_MAX)(self._roles_uncached)
        self._regions = functools.lru_cache(maxsize=ADDRESSES_CACHED_MAX)(self._regions_uncached)
        if spec is None:
            self._rules: list[_Rule] = []
            self._masks_compiled: list[_Mask] = []
            return
        self._rules = [_Rule(r) for r in spec.rules]
        # Per action: an index of its deny rules and one of its allow rules.
        lists: dict[str, tuple[list[_Rule], list[_Rule]]] = {a: ([], []) for a in ACTIONS}
        for rule, rs in zip(self._rules, spec.rules):
            for a in ACTIONS if ANYONE in rs.actions else rs.actions:
                lists[a][0 if rule.deny else 1].append(rule)
        self._by_action = {a: (_Index(denies), _Index(allows)) for a, (denies, allows) in lists.items()}
        self._candidates = functools.lru_cache(maxsize=IDENTITIES_CACHED_MAX)(self._candidates_uncached)
        self._masks_compiled = [_Mask(m) for m in spec.masks]
        self._exact_roles = {k: v for k, v in spec.identities.items() if not has_wildcard(k)}
        self._pattern_roles = [(re.compile(glob_regex(k)).match, v)
                               for k, v in spec.identities.items() if has_wildcard(k)]
        # Per IP version: prefix length -> {network bits: region numbers}, longest first.
        self._region_names = list(spec.regions)
        self._networks: dict[int, list[tuple[int, dict[int, set[int]]]]] = {4: [], 6: []}
        tables: dict[tuple[int, int], dict[int, set[int]]] = {}
        for number, networks in enumerate(spec.regions.values()):
            for net in networks:
                table = tables.setdefault((net.version, net.prefixlen), {})
                table.setdefault(int(net.network_address) >> (net.max_prefixlen - net.prefixlen), set()).add(number)
        for (version, prefixlen), table in sorted(tables.items(), key=lambda kv: -kv[0][1]):
            self._networks[version].append((prefixlen, table))

    @staticmethod
    def allow_all() -> "Policy":
        """No policy in force: every request of everyone is allowed, nothing is masked."""
        return Policy(None)

    # ---------------------------------------------------------------- what the file said

    @property
    def version(self) -> int:
        return 0 if self.spec is None else self.spec.version

    @property
    def sha256(self) -> str | None:
        return None if self.spec is None else self.spec.sha256

    @property
    def source(self) -> str | None:
        return None if self.spec is None else self.spec.source

    @property
    def warnings(self) -> tuple[str, ...]:
        return () if self.spec is None else self.spec.warnings

    @property
    def rules(self) -> tuple[RuleSpec, ...]:
        return () if self.spec is None else self.spec.rules

    def to_spec(self) -> dict[str, Any]:
        """The metadata object ``policy/active`` stores: ``{"version", "source", "sha256"}``."""
        if self.spec is None:
            raise ValueError("the allow-all policy is not stored: delete policy/active instead")
        return {"version": self.spec.version, "source": self.spec.source, "sha256": self.spec.sha256}

    def statistics(self) -> PolicyStatistics:
        info = self._decide_cached.cache_info()
        return PolicyStatistics(self.version, len(self._rules), len(self._masks_compiled), info.currsize,
                                info.hits, info.misses)

    # ---------------------------------------------------------------- who and where

    def roles_of(self, identity: str) -> list[str]:
        """The identity's roles: its own entry first, then every matching pattern's, in file order."""
        return list(self._roles(identity))

    def _roles_uncached(self, identity: str) -> tuple[str, ...]:
        if self.spec is None:
            return ()
        roles = list(self._exact_roles.get(identity, ()))
        for match, more in self._pattern_roles:
            if match(identity):
                roles.extend(more)
        return tuple(dict.fromkeys(roles))

    def regions_of(self, address: str) -> list[str]:
        """Every region with a network holding ``address``, in file order ([] if not an IP)."""
        return list(self._regions(address) or ())

    def _regions_uncached(self, address: str) -> tuple[str, ...] | None:
        ip = parse_address(address)
        if ip is None:
            return None
        if self.spec is None:
            return ()
        value, found = int(ip), set()
        for prefixlen, table in self._networks[ip.version]:
            hit = table.get(value >> (ip.max_prefixlen - prefixlen))
            if hit:
                found |= hit
        return tuple(self._region_names[i] for i in sorted(found))

    # ---------------------------------------------------------------- decisions

    def decide(self, identity: str, address: str, action: str, resource: str) -> Decision:
        """Whether ``identity`` at ``address`` may do ``action`` on ``resource`` (``topic:NAME``,
        ``smartmodule:NAME``, ``group:NAME`` or ``cluster``). ValueError for an unknown action or
        resource, or an action that does not apply to it (``read`` is for groups only; on a group
        only ``read``, ``describe``, ``admin``): the caller's mistake, never the client's."""
        if self.spec is None:
            check_request(action, resource)
            return _ALLOWED_WITHOUT_POLICY
        return self._decide_cached(identity, address, action, resource)

    def _decide(self, identity: str, address: str, action: str, resource: str) -> Decision:
        kind, name = check_request(action, resource)
        roles = self._roles(identity)
        regions = self._regions(address)
        denies, allows = self._candidates(action, identity)
        for rules, allowed in ((denies, False), (allows, True)):
            for rule in rules:
                if not rule.covers(kind, name):
                    continue
                who = rule.who.matched(identity, roles)
                if who is None:
                    continue
                where = rule.where.matched(regions, address, restricts=not allowed)
                if where is None:
                    continue
                return Decision(allowed, rule.number,
                                f"{rule.title} matched {who}{where}: {'allowed' if allowed else 'denied'}")
        return Decision(False, None, f"no rule allows {action} on {resource} for {identity} ({_roles_text(roles)}) "
                                     f"from {address or '?'} ({_regions_text(regions)}): denied by default")

    def _candidates_uncached(self, action: str, identity: str) -> tuple[list[_Rule], list[_Rule]]:
        roles = self._roles(identity)
        denies, allows = self._by_action[action]
        return denies.candidates(identity, roles), allows.candidates(identity, roles)

    def masks(self, identity: str, address: str, topic: str) -> list[tuple[str, str]]:
        """``(field path, replacement)`` pairs to apply to ``topic``'s values for this reader,
        in file order, one per path (the first mask naming a path wins)."""
        return list(self._masks_cached(identity, address, topic))

    def _masks(self, identity: str, address: str, topic: str) -> tuple[tuple[str, str], ...]:
        roles = self._roles(identity)
        regions = self._regions(address)
        out: dict[str, str] = {}
        for m in self._masks_compiled:
            if (m.topics.match(topic) and m.who.matched(identity, roles) is not None
                    and m.where.matched(regions, address, restricts=True) is not None):
                for path, replacement in m.fields:
                    out.setdefault(path, replacement)
        return tuple(out.items())

    def mask(self, identity: str, address: str, topic: str, value: bytes) -> bytes:
        """``value`` as this reader may see it (see :func:`mask_json`)."""
        masks = self._masks_cached(identity, address, topic) if self.spec is not None else ()
        return mask_json(value, masks) if masks else value


_ALLOWED_WITHOUT_POLICY = Decision(True, None, "no policy in force: everything is allowed")


def _roles_text(roles: tuple[str, ...]) -> str:
    return f"roles {', '.join(roles)}" if roles else "no roles"


def _regions_text(regions: tuple[str, ...] | None) -> str:
    if regions is None:
        return "not an IP address: region unknown"
    return f"regions {', '.join(regions)}" if regions else "in no region"


def parse_policy(text: str | bytes, filename: str = "<policy>") -> Policy:
    """Check a policy file (TOML, docs/policy.md) and compile it; raises :class:`PolicyError`
    naming the file, line and field of the first problem."""
    return Policy(parse_spec(text, filename))


def decide(policy: Policy | None, identity: str, address: str, action: str, resource: str) -> Decision:
    """:meth:`Policy.decide`, with None meaning no policy in force (everything allowed)."""
    return (policy or _ALLOW_ALL).decide(identity, address, action, resource)


def policy_from_spec(spec: Mapping[str, Any], current_version: int = 0) -> Policy:
    """The policy stored as ``policy/active`` (``{"version", "source", "sha256"}``), checked:
    the sha256 matches the source, the file's version is the spec's, and it is higher than
    ``current_version`` (a node never goes back to an older, possibly revoked, version)."""
    version, source, digest = spec.get("version"), spec.get("source"), spec.get("sha256")
    label = f"policy v{version}"
    if not isinstance(version, int) or not isinstance(source, str) or not isinstance(digest, str):
        raise PolicyError(label, 1, "spec", "a stored policy has version (int), source and sha256 (strings)")
    policy = parse_policy(source, label)
    if policy.sha256 != digest:
        raise PolicyError(label, 1, "sha256", f"the source's sha256 is {policy.sha256}, the spec says {digest}")
    if policy.version != version:
        raise PolicyError(label, 1, "version", f"the source says version {policy.version}, the spec {version}")
    if version <= current_version:
        raise PolicyError(label, 1, "version", f"{version} is not higher than the version in force "
                                               f"({current_version}): refused, an old policy is never replayed")
    return policy


_ALLOW_ALL = Policy.allow_all()
