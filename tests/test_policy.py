"""The policy engine (docs/policy.md, DESIGN.md §7): a table of requests against the example
policy, the reasons decisions give, and properties that hold for every policy: deny beats
allow, adding an allow rule never denies more, what no rule allows is denied, and a name is
never a pattern."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import pathlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolk.security import policy as policy_module
from kolk.security.policy import (ACTIONS, Decision, Policy, PolicyError, decide, parse_policy,
                                  policy_from_spec)
from kolk.security.policy_kinds import GROUP_ONLY_ACTIONS
from kolk.security.policy_parse import glob_regex

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "testdata"
EXAMPLE = (DATA / "policy_example.toml").read_text()


def _table() -> list:
    cases = []
    for n, line in enumerate((DATA / "policy_decisions.txt").read_text().splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            identity, address, action, resource, effect, rule = line.split()
            cases.append(pytest.param(identity, address, action, resource, effect, rule,
                                      id=f"{n}-{identity}-{action}-{resource}"))
    return cases


@pytest.fixture(scope="module")
def example() -> Policy:
    return parse_policy(EXAMPLE, "policy_example.toml")


@pytest.mark.parametrize("identity,address,action,resource,effect,rule", _table())
def test_decision_table(example: Policy, identity: str, address: str, action: str, resource: str, effect: str,
                        rule: str) -> None:
    """Every request of tests/testdata/policy_decisions.txt gets its answer and deciding rule."""
    d = example.decide(identity, address, action, resource)
    assert (("allow" if d.allowed else "deny"), (str(d.rule) if d.rule else "default")) == (effect, rule), d.reason


def test_reasons_name_the_rule_who_and_where(example: Policy) -> None:
    assert example.decide("alice", "10.1.2.3", "consume", "topic:orders") == Decision(
        True, 3, "rule 3 (allow consume, describe on topic:*) matched role analyst from region eu: allowed")
    assert example.decide("alice", "10.1.2.3", "consume", "topic:secret-x") == Decision(
        False, 5, "rule 5 (deny consume on topic:secret-*) matched role analyst from anywhere: denied")
    assert example.decide("alice", "10.2.0.9", "consume", "topic:x") == Decision(
        False, None, "no rule allows consume on topic:x for alice (roles analyst) from 10.2.0.9 (regions us): "
                     "denied by default")
    assert example.decide("zed", "8.8.4.4", "describe", "cluster").reason == (
        "no rule allows describe on cluster for zed (no roles) from 8.8.4.4 (in no region): denied by default")
    assert "outside eu, us, office" in example.decide("bob", "8.8.8.8", "produce", "topic:orders").reason
    assert "not an IP address" in example.decide("bob", "?", "produce", "topic:orders").reason


def test_roles_of_exact_entry_first_then_patterns(example: Policy) -> None:
    assert example.roles_of("bob") == ["producer", "analyst"]
    assert example.roles_of("spiffe://kolk/team-a/ingest") == ["producer", "team-a"]
    assert example.roles_of("spiffe://kolk/team-a/x/y") == ["team-a"]
    assert example.roles_of("anonymous") == ["public"]
    assert example.roles_of("nobody") == []


def test_regions_of_ipv4_ipv6_mapped_and_overlapping() -> None:
    p = parse_policy('version = 1\n[regions]\nwide = ["10.0.0.0/8"]\nnarrow = ["10.1.2.0/24", "2001:db8::/32"]\n'
                     'host = ["10.1.2.3", "::ffff:192.0.2.0/120"]\n[identities]\nx = ["r"]\n'
                     '[[rule]]\neffect = "allow"\nroles = ["r"]\nactions = ["*"]\nresources = ["*"]\n'
                     'regions = ["wide", "narrow", "host"]\n')
    assert p.regions_of("10.1.2.3") == ["wide", "narrow", "host"]
    assert p.regions_of("::ffff:10.1.2.3") == ["wide", "narrow", "host"]
    assert p.regions_of("[2001:db8::1]") == ["narrow"]
    assert p.regions_of("192.0.2.77") == ["host"]
    assert p.regions_of("10.9.9.9") == ["wide"]
    assert p.regions_of("11.0.0.0") == []
    assert p.regions_of("2001:db9::1") == []
    assert p.regions_of("not-an-ip") == []


def test_masks_by_role_identity_topic_and_first_path_wins(example: Policy) -> None:
    pii = [("$.email", "***"), ("$.card.number", "***"), ("$.items[*].gift_note", "***")]
    assert example.masks("alice", "10.1.2.3", "orders") == pii
    assert example.masks("bob", "10.2.0.1", "clicks-web") == pii
    assert example.masks("alice", "10.1.2.3", "payments") == []
    assert example.masks("carol", "192.168.0.10", "orders") == []
    assert example.masks("anonymous", "203.0.113.9", "public") == [("$.user.ip", "0.0.0.0")]
    p = parse_policy('version = 1\n[regions]\neu = ["10.0.0.0/8"]\n[identities]\na = ["r"]\n'
                     '[[mask]]\nroles = ["r"]\ntopics = ["t*"]\nfields = ["$.x"]\nwith = "first"\n'
                     '[[mask]]\nidentities = ["*"]\ntopics = ["t1"]\nfields = ["$.x", "$.y"]\nnot_regions = ["eu"]\n')
    assert p.masks("a", "8.8.8.8", "t1") == [("$.x", "first"), ("$.y", "***")]
    assert p.masks("a", "10.0.0.1", "t1") == [("$.x", "first")]
    assert p.masks("b", "no-address", "t1") == [("$.x", "***"), ("$.y", "***")]  # unknown place: masked
    assert p.mask("a", "10.0.0.1", "t1", b'{"x": 1, "y": 2}') == b'{"x":"first","y":2}'


def test_without_a_policy_everything_is_allowed() -> None:
    none = Policy.allow_all()
    assert none.decide("anonymous", "8.8.8.8", "admin", "cluster").allowed
    assert decide(None, "mallory", "x", "delete", "topic:anything").allowed
    assert none.masks("anonymous", "8.8.8.8", "orders") == [] and none.version == 0 and none.sha256 is None
    with pytest.raises(ValueError):
        none.decide("a", "8.8.8.8", "fly", "cluster")


def test_an_empty_policy_denies_everything() -> None:
    p = parse_policy("version = 1\n")
    assert not p.decide("anonymous", "127.0.0.1", "describe", "cluster").allowed
    assert decide(p, "admin", "127.0.0.1", "admin", "cluster").rule is None


@pytest.mark.parametrize("action,resource", [("fly", "topic:a"), ("*", "topic:a"), ("consume", "topic:"),
                                             ("consume", "orders"), ("consume", "table:a"), ("admin", "cluster:x")])
def test_decide_refuses_what_no_request_can_be(example: Policy, action: str, resource: str) -> None:
    with pytest.raises(ValueError):
        example.decide("alice", "10.1.2.3", action, resource)


def test_version_sha256_and_stored_spec(example: Policy) -> None:
    assert example.version == 7
    assert example.sha256 == hashlib.sha256(EXAMPLE.encode()).hexdigest()
    assert example.to_spec() == {"version": 7, "source": EXAMPLE, "sha256": example.sha256}
    assert parse_policy(EXAMPLE.encode()).sha256 == example.sha256


def test_policy_from_spec_refuses_tampering_and_old_versions(example: Policy) -> None:
    spec = example.to_spec()
    assert policy_from_spec(spec, current_version=6).version == 7
    for current in (7, 8):
        with pytest.raises(PolicyError, match="not higher than the version in force"):
            policy_from_spec(spec, current_version=current)
    with pytest.raises(PolicyError, match="sha256"):
        policy_from_spec(dict(spec, source=spec["source"].replace("mallory", "mallorx")))
    with pytest.raises(PolicyError, match="version"):
        policy_from_spec(dict(spec, version=8))


def test_docs_example_is_the_tested_example() -> None:
    """docs/policy.md shows exactly the policy this file tests."""
    docs = (ROOT / "docs" / "policy.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", docs, re.S)
    assert blocks and blocks[0] == EXAMPLE


def test_unused_roles_and_regions_are_warnings_with_lines() -> None:
    p = parse_policy('version = 1\n[regions]\neu = ["10.0.0.0/8"]\napac = ["11.0.0.0/8"]\n[identities]\n'
                     'a = ["r", "spare"]\n[[rule]]\neffect = "allow"\nroles = ["r"]\nactions = ["*"]\n'
                     'resources = ["*"]\nregions = ["eu"]\n', "p.toml")
    assert p.warnings == ("p.toml:6: identities: a: role spare is used by no rule or mask",
                          "p.toml:4: regions: apac is used by no rule or mask")


def test_decision_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_module, "DECISIONS_CACHED_MAX", 100)
    p = parse_policy(EXAMPLE)
    for i in range(1000):
        p.decide("alice", "10.1.2.3", "consume", f"topic:t{i}")
    p.decide("alice", "10.1.2.3", "consume", "topic:t999")
    s = p.statistics()
    assert s.decisions_cached == 100 and s.decision_hits == 1 and s.rules == 9 and s.masks == 2


# ---------------------------------------------------------------- properties

@functools.lru_cache(maxsize=None)
def glob_reference(pattern: str, name: str) -> bool:
    """The definition: * any run, ? one character, everything else itself."""
    if not pattern:
        return not name
    if pattern[0] == "*":
        return glob_reference(pattern[1:], name) or (bool(name) and glob_reference(pattern, name[1:]))
    return bool(name) and pattern[0] in ("?", name[0]) and glob_reference(pattern[1:], name[1:])


ROLES = ["r0", "r1", "r2"]
IDENTITIES = {"u0": ["r0"], "u1": ["r1", "r2"], "holder": ROLES, "svc-*": ["r2"]}
REGIONS = {"a": ["10.0.0.0/8"], "b": ["10.1.0.0/16", "2001:db8::/32"], "c": ["192.168.0.0/16"]}
HEAD = ("version = 1\n[regions]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in REGIONS.items())
        + "[identities]\n" + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in IDENTITIES.items()))
RESOURCES = ["topic:t*", "topic:t1", "topic:x?", "smartmodule:m*", "cluster", "*", "topic:*", "topic:[t]1"]
NOT_GROUP_ACTIONS = [a for a in ACTIONS if a not in GROUP_ONLY_ACTIONS]  # groups: tests/test_group_policy.py

rules_st = st.fixed_dictionaries(
    {"effect": st.sampled_from(["allow", "deny"]),
     "actions": st.one_of(st.just(["*"]), st.lists(st.sampled_from(NOT_GROUP_ACTIONS), min_size=1, max_size=3,
                                                   unique=True)),
     "resources": st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=3, unique=True)},
    optional={"roles": st.lists(st.sampled_from(ROLES + ["*", "r?"]), min_size=1, max_size=2, unique=True),
              "identities": st.lists(st.sampled_from(["u0", "u1", "u*", "*", "svc-1", "anonymous"]),
                                     min_size=1, max_size=2, unique=True),
              "regions": st.lists(st.sampled_from(sorted(REGIONS)), min_size=1, max_size=2, unique=True),
              "not_regions": st.lists(st.sampled_from(sorted(REGIONS)), min_size=1, max_size=2, unique=True)},
).filter(lambda r: "roles" in r or "identities" in r)
request_st = st.tuples(st.sampled_from(["u0", "u1", "holder", "svc-1", "anonymous", "zz"]),
                       st.sampled_from(["10.1.2.3", "10.2.3.4", "192.168.1.1", "8.8.8.8", "2001:db8::1",
                                        "::ffff:10.1.2.3", "bogus"]),
                       st.sampled_from(NOT_GROUP_ACTIONS),
                       st.sampled_from(["topic:t1", "topic:t2", "topic:x1", "topic:xx1", "topic:[t]1",
                                        "smartmodule:m1", "cluster", "topic:t*"]))


def policy_text(rules: list[dict]) -> str:
    return HEAD + "".join("[[rule]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in r.items()) for r in rules)


def reference_matches(rule: dict, request: tuple, restricts: bool) -> bool:
    """Whether ``rule`` applies to ``request``, written straight from docs/policy.md."""
    identity, address, action, resource = request
    roles = [r for key, rs in IDENTITIES.items() if glob_reference(key, identity) for r in rs]
    who = rule.get("roles", []) + rule.get("identities", [])
    if not ("*" in who or any(glob_reference(p, identity) for p in rule.get("identities", []))
            or any(glob_reference(p, r) for p in rule.get("roles", []) for r in roles)):
        return False
    if "*" not in rule["actions"] and action not in rule["actions"]:
        return False
    if not any(p == "*" or p == resource == "cluster" or (":" in p and ":" in resource and p.split(":")[0] ==
               resource.split(":")[0] and glob_reference(p.split(":", 1)[1], resource.split(":", 1)[1]))
               for p in rule["resources"]):
        return False
    if "regions" not in rule and "not_regions" not in rule:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return restricts
    ip = getattr(ip, "ipv4_mapped", None) or ip
    here = {k for k, nets in REGIONS.items() if any(ip in ipaddress.ip_network(n) for n in nets)}
    return (("regions" not in rule or bool(here & set(rule["regions"])))
            and not here & set(rule.get("not_regions", [])))


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@PROPERTY
@given(st.lists(rules_st, max_size=8), st.lists(request_st, min_size=1, max_size=8))
def test_decisions_follow_deny_beats_allow_then_default_deny(rules: list[dict], requests: list[tuple]) -> None:
    """(1) A matching deny rule always denies (the first one decides); (3) with no matching
    rule the answer is deny; otherwise the first matching allow rule allows."""
    p = parse_policy(policy_text(rules))
    for request in requests:
        d = p.decide(*request)
        denies = [i + 1 for i, r in enumerate(rules) if r["effect"] == "deny" and reference_matches(r, request, True)]
        allows = [i + 1 for i, r in enumerate(rules) if r["effect"] == "allow" and reference_matches(r, request, False)]
        if denies:
            assert (d.allowed, d.rule) == (False, denies[0]), d.reason
        elif allows:
            assert (d.allowed, d.rule) == (True, allows[0]), d.reason
        else:
            assert (d.allowed, d.rule) == (False, None), d.reason


@PROPERTY
@given(st.lists(rules_st, max_size=6), rules_st, st.integers(0, 6), st.lists(request_st, min_size=1, max_size=5))
def test_adding_an_allow_rule_never_denies_more(rules: list[dict], extra: dict, at: int, requests: list) -> None:
    """(2) Wherever the new allow rule goes, what was allowed stays allowed."""
    before = parse_policy(policy_text(rules))
    after = parse_policy(policy_text(rules[:at] + [dict(extra, effect="allow")] + rules[at:]))
    for request in requests:
        if before.decide(*request).allowed:
            assert after.decide(*request).allowed


names = st.text(alphabet="ab*?[]-.", min_size=1, max_size=8)


@PROPERTY
@given(names, names)
def test_a_name_is_never_a_pattern(pattern: str, name: str) -> None:
    """(4) ``*``, ``?`` and ``[`` in a resource NAME are only themselves; in a pattern only
    ``*`` and ``?`` are special."""
    p = parse_policy(f'version = 1\n[[rule]]\neffect = "allow"\nidentities = ["*"]\nactions = ["consume"]\n'
                     f'resources = [{json.dumps("topic:" + pattern)}]\n')
    allowed = p.decide("anyone", "10.0.0.1", "consume", f"topic:{name}").allowed
    assert allowed == glob_reference(pattern, name)
    if "*" not in pattern and "?" not in pattern:
        assert allowed == (name == pattern)
    literal = parse_policy(f'version = 1\n[[rule]]\neffect = "allow"\nidentities = ["*"]\nactions = ["consume"]\n'
                           f'resources = [{json.dumps("topic:" + (name.replace("*", "").replace("?", "") or "z"))}]\n')
    if "*" in name or "?" in name:  # a literal rule never covers a name holding pattern characters
        assert not literal.decide("anyone", "10.0.0.1", "consume", f"topic:{name}").allowed


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab*?.[", max_size=12), st.text(alphabet="ab.[*?", max_size=14))
def test_glob_regex_is_the_glob_definition(pattern: str, name: str) -> None:
    assert (re.match(glob_regex(pattern), name) is not None) == glob_reference(pattern, name)


def test_many_stars_stay_fast() -> None:
    """Atomic groups: a pattern of 400 stars against a long near-miss answers at once."""
    p = parse_policy('version = 1\n[[rule]]\neffect = "allow"\nidentities = ["*"]\nactions = ["consume"]\n'
                     f'resources = ["topic:{"*a" * 400}b"]\n')
    assert not p.decide("x", "10.0.0.1", "consume", "topic:" + "a" * 5000).allowed
    assert p.decide("x", "10.0.0.1", "consume", "topic:" + "a" * 5000 + "b").allowed
