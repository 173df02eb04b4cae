"""Consumer groups in the policy (docs/policy.md "Consumer groups", docs/security.md): the
resource ``group:PATTERN`` with the actions ``read``, ``describe`` and ``admin``; ``read`` on
anything else, or a topic action on a group, is refused with its file, line and field; access
to topics never grants access to groups; deny beats allow and regions apply as for topics; group
denials and operator changes to a group are audited."""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kolk.node.authz import AUDIT_DETAIL_CHARS_MAX, GROUP_CHANGE, Authorizer, Denied
from kolk.security.policy import (ACTIONS, GROUP_ACTIONS, Policy, PolicyError, check_request, decide,
                                  parse_policy)
from kolk.security.tls import Peer

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "testdata" / "policy_example.toml"

HEAD = ('version = 1\n[regions]\neu = ["10.1.0.0/16"]\nus = ["10.2.0.0/16"]\n'
        '[identities]\nalice = ["billing"]\nbob = ["analyst"]\nops = ["operator"]\n')


def policy(*rules: str) -> Policy:
    return parse_policy(HEAD + "".join(f'[[rule]]\n{r.strip()}\n' for r in rules), "groups.toml")


def refused(*rules: str) -> PolicyError:
    with pytest.raises(PolicyError) as e:
        policy(*rules)
    return e.value


BILLING_READ = 'effect = "allow"\nroles = ["billing"]\nactions = ["read"]\nresources = ["group:billing-*"]'


# ---------------------------------------------------------------- decisions on groups

@pytest.mark.parametrize("identity,action,group,allowed", [
    ("alice", "read", "billing-eu", True),
    ("alice", "read", "billing-", True),
    ("alice", "read", "billing", False),        # the glob needs the dash
    ("alice", "read", "xbilling-eu", False),
    ("alice", "describe", "billing-eu", False),  # read does not imply describe
    ("alice", "admin", "billing-eu", False),
    ("bob", "read", "billing-eu", False),
    ("ops", "describe", "anything", True),
    ("ops", "admin", "billing-eu", True),
    ("ops", "read", "billing-eu", False),        # admin does not imply read
])
def test_group_globs_allow_the_three_actions(identity: str, action: str, group: str, allowed: bool) -> None:
    p = policy(BILLING_READ, 'effect = "allow"\nroles = ["operator"]\nactions = ["describe", "admin"]\n'
                             'resources = ["group:*"]')
    d = p.decide(identity, "10.1.0.1", action, f"group:{group}")
    assert d.allowed is allowed, d.reason


def test_the_reason_names_the_group_rule() -> None:
    p = policy(BILLING_READ)
    assert p.decide("alice", "10.1.0.1", "read", "group:billing-eu").reason == (
        "rule 1 (allow read on group:billing-*) matched role billing from anywhere: allowed")
    assert p.decide("bob", "10.1.0.1", "read", "group:billing-eu").reason == (
        "no rule allows read on group:billing-eu for bob (roles analyst) from 10.1.0.1 (regions eu): "
        "denied by default")


def test_star_actions_and_star_resources_cover_groups() -> None:
    p = policy('effect = "allow"\nroles = ["operator"]\nactions = ["*"]\nresources = ["group:ops-*"]',
               'effect = "allow"\nroles = ["analyst"]\nactions = ["describe"]\nresources = ["*"]')
    for action in GROUP_ACTIONS:
        assert p.decide("ops", "10.1.0.1", action, "group:ops-1").allowed
        assert not p.decide("ops", "10.1.0.1", action, "group:other").allowed
    assert p.decide("bob", "10.1.0.1", "describe", "group:any").allowed
    assert not p.decide("bob", "10.1.0.1", "read", "group:any").allowed


def test_consume_on_every_topic_grants_no_group() -> None:
    """Explicit, as Kafka's group ACLs: a policy written before groups existed, granting consume
    (and describe) on topic:*, lets its readers read topics but join, describe or reset no group."""
    p = policy('effect = "allow"\nroles = ["analyst", "billing"]\nactions = ["consume", "describe"]\n'
               'resources = ["topic:*"]')
    assert p.decide("bob", "10.1.0.1", "consume", "topic:billing").allowed
    for action in GROUP_ACTIONS:
        d = p.decide("bob", "10.1.0.1", action, "group:billing-eu")
        assert (d.allowed, d.rule) == (False, None), d.reason


def test_the_example_policy_grants_groups_only_to_its_star_rule() -> None:
    """tests/testdata/policy_example.toml predates groups: the analysts who consume topic:* get
    no group; the operators' actions = ["*"] on resources = ["*"] covers groups too."""
    p = parse_policy(EXAMPLE.read_text(), "policy_example.toml")
    assert not p.decide("alice", "10.1.2.3", "read", "group:g").allowed
    assert p.decide("carol", "192.168.0.10", "read", "group:g").allowed
    assert p.decide("carol", "192.168.0.10", "admin", "group:g").allowed
    d = p.decide("mallory", "192.168.0.10", "read", "group:g")
    assert (d.allowed, d.rule) == (False, 8)  # the ban (actions *, resources *) reaches groups too


def test_deny_beats_allow_for_groups() -> None:
    deny = 'effect = "deny"\nidentities = ["alice"]\nactions = ["read"]\nresources = ["group:billing-secret*"]'
    for rules in ((BILLING_READ, deny), (deny, BILLING_READ)):
        p = policy(*rules)
        d = p.decide("alice", "10.1.0.1", "read", "group:billing-secret-1")
        assert not d.allowed and "deny read on group:billing-secret*" in d.reason
        assert p.decide("alice", "10.1.0.1", "read", "group:billing-eu").allowed


def test_a_deny_of_consume_does_not_deny_groups_but_a_deny_of_everything_does() -> None:
    p = policy('effect = "allow"\nroles = ["billing"]\nactions = ["*"]\nresources = ["*"]',
               'effect = "deny"\nidentities = ["alice"]\nactions = ["consume"]\nresources = ["*"]')
    assert not p.decide("alice", "10.1.0.1", "consume", "topic:t").allowed
    assert p.decide("alice", "10.1.0.1", "read", "group:g").allowed
    p = policy('effect = "allow"\nroles = ["billing"]\nactions = ["*"]\nresources = ["*"]',
               'effect = "deny"\nidentities = ["alice"]\nactions = ["*"]\nresources = ["*"]')
    assert not p.decide("alice", "10.1.0.1", "read", "group:g").allowed


def test_regions_apply_to_group_rules() -> None:
    p = policy(BILLING_READ + '\nregions = ["eu"]',
               'effect = "deny"\nidentities = ["*"]\nactions = ["admin"]\nresources = ["group:*"]\n'
               'not_regions = ["eu"]',
               'effect = "allow"\nroles = ["operator"]\nactions = ["admin"]\nresources = ["group:*"]')
    assert p.decide("alice", "10.1.3.4", "read", "group:billing-1").allowed
    assert not p.decide("alice", "10.2.3.4", "read", "group:billing-1").allowed   # us: no allow applies
    assert not p.decide("alice", "bogus", "read", "group:billing-1").allowed      # unknown place gains nothing
    assert p.decide("ops", "10.1.0.9", "admin", "group:g").allowed
    assert not p.decide("ops", "10.2.0.9", "admin", "group:g").allowed           # the deny outside eu
    assert not p.decide("ops", "bogus", "admin", "group:g").allowed              # deny applies when unknown


def test_a_group_name_is_never_a_pattern() -> None:
    p = policy('effect = "allow"\nroles = ["billing"]\nactions = ["read"]\nresources = ["group:billing"]')
    assert not p.decide("alice", "10.1.0.1", "read", "group:billing*").allowed
    assert p.decide("alice", "10.1.0.1", "read", "group:billing").allowed


# ---------------------------------------------------------------- refused files, refused requests

def test_read_on_a_topic_rule_is_refused_with_file_line_and_field() -> None:
    e = refused('effect = "allow"\nroles = ["billing"]\nactions = ["consume", "read"]\nresources = ["topic:*"]')
    assert str(e) == ('groups.toml:12: rule 1: actions: "read" applies only to consumer groups and this rule names '
                      'none (topic:*): add a group:PATTERN resource (for a topic, consume is the action)')
    assert (e.filename, e.line, e.field) == ("groups.toml", 12, "rule 1: actions")


@pytest.mark.parametrize("resource", ["smartmodule:m*", "cluster"])
def test_read_on_a_smartmodule_or_cluster_rule_is_refused(resource: str) -> None:
    e = refused(f'effect = "deny"\nroles = ["billing"]\nactions = [\n  "read",\n]\nresources = ["{resource}"]')
    assert (e.line, e.field) == (13, "rule 1: actions")  # the line holding "read"
    assert e.problem.startswith('"read" applies only to consumer groups and this rule names none')


def test_a_topic_action_on_a_group_rule_is_refused() -> None:
    e = refused('effect = "allow"\nroles = ["billing"]\nactions = ["consume"]\nresources = ["group:billing-*"]')
    assert str(e) == ('groups.toml:12: rule 1: actions: "consume" applies to no resource of this rule '
                      '(group:billing-*): on consumer groups the actions are read, describe, admin')


def test_a_resource_no_action_applies_to_is_refused_on_its_line() -> None:
    e = refused('effect = "allow"\nroles = ["billing"]\nactions = ["read"]\n'
                'resources = [\n  "group:billing-*",\n  "topic:billing",\n]')
    assert str(e) == ('groups.toml:15: rule 1: resources: "topic:billing" is a topic and none of this rule\'s '
                      'actions (read) applies to it (there: produce, consume, create, delete, describe, alter, use, '
                      'admin, or *)')
    e = refused('effect = "allow"\nroles = ["billing"]\nactions = ["consume"]\n'
                'resources = ["topic:billing", "group:billing-*"]')
    assert (e.line, e.field) == (13, "rule 1: resources")
    assert e.problem == ('"group:billing-*" is a consumer group and none of this rule\'s actions (consume) applies '
                         'to it (there: read, describe, admin, or *)')


@pytest.mark.parametrize("resource", ["group:", "groups:billing", "group"])
def test_a_malformed_group_resource_is_refused(resource: str) -> None:
    e = refused(f'effect = "allow"\nroles = ["billing"]\nactions = ["read"]\nresources = ["{resource}"]')
    assert e.problem == (f'"{resource}" is not a resource (topic:PATTERN, smartmodule:PATTERN, group:PATTERN, '
                         'cluster, or * for every resource)')


def test_a_rule_for_topics_and_groups_together_is_accepted() -> None:
    p = policy('effect = "allow"\nroles = ["billing"]\nactions = ["consume", "read"]\n'
               'resources = ["topic:payments", "group:billing-*"]')
    assert p.decide("alice", "10.1.0.1", "consume", "topic:payments").allowed
    assert p.decide("alice", "10.1.0.1", "read", "group:billing-1").allowed
    assert not p.decide("alice", "10.1.0.1", "consume", "topic:billing-1").allowed


@pytest.mark.parametrize("action,resource,message", [
    ("read", "topic:t", "'read' does not apply to 'topic:t' (on a topic: produce, consume, create, delete, "
                        "describe, alter, use, admin)"),
    ("read", "cluster", "'read' does not apply to 'cluster'"),
    ("consume", "group:g", "'consume' does not apply to 'group:g' (on a group: read, describe, admin)"),
    ("produce", "group:g", "'produce' does not apply to 'group:g'"),
    ("read", "group:", "'group:' is not a resource (topic:NAME, smartmodule:NAME, group:NAME or cluster)"),
    ("join", "group:g", "'join' is not an action"),
])
def test_decide_refuses_what_no_group_request_can_be(action: str, resource: str, message: str) -> None:
    for p in (policy(BILLING_READ), Policy.allow_all()):
        with pytest.raises(ValueError) as e:
            p.decide("alice", "10.1.0.1", action, resource)
        assert str(e.value).startswith(message)


def test_without_a_policy_groups_are_open() -> None:
    for action in GROUP_ACTIONS:
        assert decide(None, "anonymous", "8.8.8.8", action, "group:any").allowed
    assert check_request("read", "group:g") == ("group", "g")


def test_explain_refuses_read_on_a_topic_in_one_line() -> None:
    out = subprocess.run([sys.executable, "-m", "kolk", "policy", "explain", str(EXAMPLE), "--identity", "carol",
                          "--from", "192.168.0.10", "--action", "read", "--resource", "topic:orders"],
                         capture_output=True, text=True, timeout=120, cwd=str(ROOT), env=dict(os.environ, KOLK_SC=""))
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == ("kolk policy explain: --action 'read' does not apply to 'topic:orders' (on a topic: "
                          "produce, consume, create, delete, describe, alter, use, admin)\n")
    ok = subprocess.run([sys.executable, "-m", "kolk", "policy", "explain", str(EXAMPLE), "--identity", "carol",
                         "--from", "192.168.0.10", "--action", "read", "--resource", "group:billing"],
                        capture_output=True, text=True, timeout=120, cwd=str(ROOT), env=dict(os.environ, KOLK_SC=""))
    assert ok.returncode == 0 and ok.stdout.startswith("ALLOWED: rule 1 (allow * on *) matched role admin"), ok


# ---------------------------------------------------------------- properties, groups included

@functools.lru_cache(maxsize=None)
def glob_reference(pattern: str, name: str) -> bool:
    if not pattern:
        return not name
    if pattern[0] == "*":
        return glob_reference(pattern[1:], name) or (bool(name) and glob_reference(pattern, name[1:]))
    return bool(name) and pattern[0] in ("?", name[0]) and glob_reference(pattern[1:], name[1:])


ROLES = {"u0": ["r0"], "u1": ["r1", "r0"]}
REGIONS = {"a": ["10.0.0.0/8"], "b": ["10.1.0.0/16"]}
PHEAD = ("version = 1\n[regions]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in REGIONS.items())
         + "[identities]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in ROLES.items()))


def kind_of(resource: str) -> str:
    return resource if resource in ("*", "cluster") else resource.split(":")[0]


def applies_reference(action: str, kind: str) -> bool:
    """docs/policy.md: read, describe, admin on groups; everything but read elsewhere."""
    return kind == "*" or (action in ("read", "describe", "admin") if kind == "group" else action != "read")


def fits(rule: dict) -> bool:
    """A rule the parser accepts: every action applies to one of its resources and back."""
    if "*" in rule["actions"]:
        return True
    kinds = [kind_of(r) for r in rule["resources"]]
    return (all(any(applies_reference(a, k) for k in kinds) for a in rule["actions"])
            and all(any(applies_reference(a, k) for a in rule["actions"]) for k in kinds))


rules_st = st.fixed_dictionaries(
    {"effect": st.sampled_from(["allow", "deny"]),
     "actions": st.one_of(st.just(["*"]), st.lists(st.sampled_from(ACTIONS), min_size=1, max_size=3, unique=True)),
     "resources": st.lists(st.sampled_from(["group:g*", "group:g1", "group:?2", "group:*", "topic:g*", "*",
                                            "cluster"]), min_size=1, max_size=3, unique=True),
     "roles": st.lists(st.sampled_from(["r0", "r1", "*"]), min_size=1, max_size=2, unique=True)},
    optional={"regions": st.just(["b"]), "not_regions": st.just(["b"])})
requests_st = st.lists(st.tuples(st.sampled_from(["u0", "u1", "zz"]), st.sampled_from(["10.1.0.1", "10.9.0.1",
                                                                                        "8.8.8.8", "bogus"]),
                                 st.sampled_from(GROUP_ACTIONS), st.sampled_from(["g1", "g2", "x2", "h"])),
                       min_size=1, max_size=8)


def matches(rule: dict, identity: str, address: str, action: str, group: str, restricts: bool) -> bool:
    roles = ROLES.get(identity, [])
    if not ("*" in rule["roles"] or any(r in rule["roles"] for r in roles)):
        return False
    if "*" not in rule["actions"] and action not in rule["actions"]:
        return False
    if not any(r == "*" or (r.startswith("group:") and glob_reference(r[6:], group)) for r in rule["resources"]):
        return False
    if "regions" not in rule and "not_regions" not in rule:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return restricts
    here = {k for k, nets in REGIONS.items() if any(ip in ipaddress.ip_network(n) for n in nets)}
    return ("regions" not in rule or bool(here & set(rule["regions"]))) and not here & set(rule.get("not_regions", []))


def rules_text(rules: list[dict]) -> str:
    return PHEAD + "".join("[[rule]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in r.items()) for r in rules)


PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@PROPERTY
@given(rules_st)
def test_a_rule_is_refused_exactly_when_a_part_of_it_could_never_apply(rule: dict) -> None:
    if fits(rule):
        assert parse_policy(rules_text([rule])).rules[0].actions == tuple(rule["actions"])
    else:
        with pytest.raises(PolicyError, match=r"^<policy>:(9|1[0-9]): rule 1: (actions|resources): "):
            parse_policy(rules_text([rule]))


@PROPERTY
@given(st.lists(rules_st.filter(fits), max_size=6), requests_st)
def test_group_decisions_follow_deny_beats_allow_then_default_deny(rules: list[dict], requests: list) -> None:
    p = parse_policy(rules_text(rules))
    for identity, address, action, group in requests:
        d = p.decide(identity, address, action, f"group:{group}")
        denies = [i + 1 for i, r in enumerate(rules)
                  if r["effect"] == "deny" and matches(r, identity, address, action, group, True)]
        allows = [i + 1 for i, r in enumerate(rules)
                  if r["effect"] == "allow" and matches(r, identity, address, action, group, False)]
        expected = (False, denies[0]) if denies else (True, allows[0]) if allows else (False, None)
        assert (d.allowed, d.rule) == expected, d.reason


# ---------------------------------------------------------------- the authorizer: audit, _consumer_offsets

def authorizer(source: str | None, tls: bool = True) -> tuple[Authorizer, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    a = Authorizer("spu-1", tls, events.append)
    if source is not None:
        p = parse_policy(source)
        a.on_policy({"spec": p.to_spec()})
    return a, events


ALICE = Peer("alice", "10.1.0.1", tls=True)


def test_a_group_denial_is_audited_and_names_the_group() -> None:
    a, events = authorizer(HEAD + f"[[rule]]\n{BILLING_READ}\n")
    a.check(ALICE, "read", "group:billing-eu")
    assert events == []
    with pytest.raises(Denied) as e:
        a.check(ALICE, "read", "group:payroll")
    assert str(e.value) == ("alice from 10.1.0.1 may not read group:payroll: no rule allows read on group:payroll "
                            "for alice (roles billing) from 10.1.0.1 (regions eu): denied by default "
                            "(policy version 1)")
    assert events == [{"node": "spu-1", "identity": "alice", "address": "10.1.0.1", "action": "read",
                       "resource": "group:payroll", "decision": "deny", "rule": None,
                       "reason": e.value.decision.reason, "policy_version": 1}]


def test_audited_change_has_the_metadata_change_shape_and_the_allowing_rule() -> None:
    a, events = authorizer(HEAD + '[[rule]]\neffect = "allow"\nroles = ["operator"]\nactions = ["admin"]\n'
                                  'resources = ["group:*"]\n')
    ops = Peer("ops", "10.1.0.2", tls=True)
    a.audited_change(ops, "admin", "group:billing", {"operation": "reset", "offsets": [("orders", 0, 17)]})
    assert events == [{"node": "spu-1", "identity": "ops", "address": "10.1.0.2", "action": "admin",
                       "resource": "group:billing", "decision": "allow", "rule": 1, "reason": GROUP_CHANGE,
                       "detail": {"operation": "reset", "offsets": [["orders", 0, 17]]}, "policy_version": 1}]


def test_audited_change_cuts_a_long_detail() -> None:
    a, events = authorizer(None, tls=True)
    a.audited_change(ALICE, "admin", "group:g", {"operation": "reset", "offsets": [["t", i, i] for i in range(5000)]})
    detail = events[0]["detail"]
    assert detail["detail_truncated"] is True and detail["chars"] > AUDIT_DETAIL_CHARS_MAX
    assert len(detail["head"]) == AUDIT_DETAIL_CHARS_MAX and events[0]["rule"] is None
    assert len(json.dumps(events[0])) < AUDIT_DETAIL_CHARS_MAX * 2


def test_a_plaintext_cluster_without_a_policy_audits_no_group_change() -> None:
    a, events = authorizer(None, tls=False)
    a.audited_change(ALICE, "admin", "group:g", {"operation": "delete"})
    assert events == []


def test_the_docs_example_for_groups_is_ready_to_paste() -> None:
    """docs/policy.md "Consumer groups": its rules, pasted under an [identities] table, give the
    role billing its groups and its topic, and nothing else."""
    docs = (ROOT / "docs" / "policy.md").read_text()
    section = docs[docs.index("## Consumer groups"):docs.index("## How a request is decided")]
    rules = section.split("```toml\n", 1)[1].split("```", 1)[0]
    p = parse_policy('version = 1\n[identities]\n"spiffe://kolk/billing" = ["billing"]\n' + rules, "docs.toml")
    who = ("spiffe://kolk/billing", "10.1.0.1")
    assert p.decide(*who, "read", "group:billing-eu").allowed
    assert p.decide(*who, "consume", "topic:payments").allowed
    assert not p.decide(*who, "read", "group:payroll").allowed
    assert not p.decide(*who, "admin", "group:billing-eu").allowed
    assert p.warnings == ()
