"""Malformed policy files (docs/policy.md "Errors and warnings"): each is refused with the
file, the exact line and the field of the problem, as ``FILE:LINE: FIELD: PROBLEM``."""

from __future__ import annotations

import pathlib

import pytest

from kolk.security.policy import PolicyError, parse_policy
from kolk.security.policy_parse import POLICY_BYTES_MAX, RULES_MAX

EXAMPLE = (pathlib.Path(__file__).resolve().parent / "testdata" / "policy_example.toml").read_text()
LINES = EXAMPLE.splitlines()


def line_of(text: str, start: int = 1) -> int:
    """The 1-based number of the first line of the example holding ``text`` (from ``start``)."""
    return next(n for n, line in enumerate(LINES, 1) if n >= start and text in line)


def refused(text: str | bytes) -> PolicyError:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "policy.toml")
    return e.value


def changed(old: str, new: str) -> str:
    assert EXAMPLE.count(old) >= 1, old
    return EXAMPLE.replace(old, new, 1)


RULE2 = line_of("producers write orders and clicks") - 1  # its [[rule]] header


def test_the_example_is_valid() -> None:
    assert parse_policy(EXAMPLE, "policy.toml").warnings == ()


def test_toml_syntax_error_names_the_line() -> None:
    e = refused(changed('description = "producers write orders and clicks"', 'description = "producers write'))
    assert str(e).startswith(f"policy.toml:{RULE2 + 1}: TOML syntax: ")
    assert e.line == RULE2 + 1


def test_unknown_top_level_key() -> None:
    e = refused(changed('description = "acme production"', 'rules = 3'))
    assert str(e) == "policy.toml:3: rules: unknown top-level key (did you mean rule?)"
    e = refused(EXAMPLE + '\n[[rules]]\neffect = "allow"\n')
    assert str(e) == f"policy.toml:{len(LINES) + 2}: rules: unknown top-level key (did you mean rule?)"


def test_unknown_key_in_a_rule() -> None:
    e = refused(changed('resources = ["topic:orders", "topic:clicks-*"]', 'resource = ["topic:orders"]'))
    assert str(e) == f"policy.toml:{RULE2 + 5}: rule 2: resource: unknown key (did you mean resources?)"


def test_unknown_action() -> None:
    e = refused(changed('actions = ["produce", "describe"]', 'actions = ["prodcue", "describe"]'))
    assert str(e) == (f'policy.toml:{RULE2 + 4}: rule 2: actions: "prodcue" is not an action (one of produce, '
                      'consume, create, delete, describe, alter, use, admin, read, or * for all)')
    assert (e.filename, e.line, e.field) == ("policy.toml", RULE2 + 4, "rule 2: actions")


def test_unknown_action_in_a_list_over_several_lines_names_its_own_line() -> None:
    e = refused(changed('actions = ["produce", "describe"]', 'actions = [\n  "produce",\n  "descibe",\n]'))
    assert str(e).startswith(f'policy.toml:{RULE2 + 6}: rule 2: actions: "descibe" is not an action')


def test_bad_effect() -> None:
    e = refused(changed('effect = "allow"\nroles = ["producer"]', 'effect = "permit"\nroles = ["producer"]'))
    assert str(e) == f'policy.toml:{RULE2 + 2}: rule 2: effect: "permit" is not "allow" or "deny"'
    e = refused(changed('effect = "allow"\nroles = ["producer"]', 'roles = ["producer"]'))
    assert str(e) == f'policy.toml:{RULE2}: rule 2: effect: missing: effect = "allow" or "deny"'


@pytest.mark.parametrize("network,why", [("10.2.0.1/16", "has host bits set"),
                                         ("10.2.0.0/33", "does not appear to be an IPv4 or IPv6 network"),
                                         ("2001:db8:2::/129", "does not appear to be an IPv4 or IPv6 network"),
                                         ("eu", "does not appear to be an IPv4 or IPv6 network")])
def test_bad_cidr(network: str, why: str) -> None:
    e = refused(changed('"10.2.0.0/16"', f'"{network}"'))
    assert str(e).startswith(f'policy.toml:7: regions: us: "{network}" is not a network (')
    assert why in str(e)


def test_unknown_region_referenced_by_a_rule() -> None:
    e = refused(changed('regions = ["eu"]', 'regions = ["europe"]'))
    eu = line_of('regions = ["eu"]')
    assert str(e) == (f'policy.toml:{eu}: rule 3: regions: "europe" is not a region in '
                      '[regions] (eu, us, office)')
    e = refused(changed('not_regions = ["us"]', 'not_regions = ["usa"]'))
    assert str(e) == (f'policy.toml:{line_of("not_regions")}: rule 7: not_regions: "usa" is not a region in '
                      '[regions]; did you mean us?')


def test_a_rule_for_a_role_no_identity_has() -> None:
    """Chosen check (docs/policy.md): every role a rule or mask names is given to someone."""
    e = refused(changed('roles = ["producer"]', 'roles = ["producers"]'))
    assert str(e) == (f'policy.toml:{RULE2 + 3}: rule 2: roles: "producers" is not a role of any identity in '
                      '[identities]: it would never apply; did you mean producer?')
    e = refused(changed('roles = ["analyst"]\ntopics', 'roles = ["auditor"]\ntopics'))
    mask_roles = line_of('roles = ["analyst"]', line_of("[[mask]]"))
    assert str(e).startswith(f'policy.toml:{mask_roles}: mask 1: roles: "auditor" is not a role of any identity')
    e = refused(changed('roles = ["producer"]', 'roles = ["prod-*"]'))
    assert 'rule 2: roles: "prod-*" is not a role of any identity' in str(e)


def test_mask_path_without_dollar_dot() -> None:
    e = refused(changed('"$.card.number"', '"card.number"'))
    assert str(e) == (f'policy.toml:{line_of("$.email")}: mask 1: fields: "card.number" is not a field path: '
                      'must start with $. (for example $.email)')
    e = refused(changed('"$.card.number"', '"$.card[0]"'))
    assert 'mask 1: fields: "$.card[0]" is not a field path: at "[0]": only [*]' in str(e)


@pytest.mark.parametrize("version,shown", [('"7"', '"7"'), ("7.0", "7.0"), ("0", "0"), ("-3", "-3"), ("true", "true")])
def test_version_not_a_positive_int(version: str, shown: str) -> None:
    e = refused(changed("version = 7", f"version = {version}"))
    assert str(e) == f"policy.toml:2: version: {shown} is not an integer from 1 to {2**63 - 1}"


def test_version_missing() -> None:
    e = refused(changed("version = 7\n", ""))
    assert str(e).startswith("policy.toml:1: version: missing: every policy has version = N")


def test_too_many_rules() -> None:
    rule = '[[rule]]\neffect = "allow"\nidentities = ["*"]\nactions = ["*"]\nresources = ["*"]\n'
    e = refused("version = 1\n" + rule * (RULES_MAX + 1))
    assert str(e) == f"policy.toml:{2 + 5 * RULES_MAX}: rule {RULES_MAX + 1}: more than 10,000 rules in one policy"


def test_file_over_4_mib() -> None:
    e = refused("version = 1\n#" + "x" * POLICY_BYTES_MAX)
    assert str(e).startswith("policy.toml:1: ") and "more than 4194304 (4 MiB)" in str(e)


def test_not_utf8_names_the_line() -> None:
    assert str(refused(b"version = 1\n# caf\xe9\n")) == "policy.toml:2: not UTF-8 text"


@pytest.mark.parametrize("old,new,message", [
    ('resources = ["topic:orders", "topic:clicks-*"]', 'resources = ["topics:orders"]',
     'rule 2: resources: "topics:orders" is not a resource (topic:PATTERN, smartmodule:PATTERN, group:PATTERN, '
     'cluster, or * for every resource)'),
    ('actions = ["produce", "describe"]', 'actions = "produce"', 'rule 2: actions: must be a list: write ["produce"]'),
    ('actions = ["produce", "describe"]', 'actions = []', "rule 2: actions: is empty"),
    ('roles = ["producer"]\n', "", 'rule 2: give roles or identities: who this is for ("*" for anyone)'),
    ('alice = ["analyst"]', 'alice = ["ana*"]', 'identities: alice: "ana*" is not a role name'),
    ('with = "0.0.0.0"', "with = 0", "mask 2: with: must be a string"),
])
def test_other_field_errors(old: str, new: str, message: str) -> None:
    assert message in str(refused(changed(old, new)))


def test_a_single_bracket_rule_table() -> None:
    assert str(refused('version = 1\n[rule]\neffect = "allow"\n')) == (
        "policy.toml:2: rule: write each rule as a [[rule]] table (two brackets)")
