"""``kolk policy`` as a user runs it (docs/policy.md): ``check`` exits 0 or prints the first
problem as FILE:LINE: FIELD: PROBLEM and exits 1; ``explain`` names the deciding rule;
``apply`` and ``show`` against a real SC, where a version must always go up."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "tests" / "testdata" / "policy_example.toml"
sys.path.insert(0, str(ROOT))


def kolk(*args: str, expect: int | None = 0) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "kolk", *args], capture_output=True, text=True, timeout=120,
                         cwd=str(ROOT), env=dict(os.environ, KOLK_SC=""))
    if expect is not None:
        assert out.returncode == expect, (out.stdout, out.stderr)
    return out


def test_check_a_valid_file() -> None:
    out = kolk("policy", "check", str(EXAMPLE))
    assert out.stdout.strip() == (f"{EXAMPLE}: policy version 7 is valid: 9 rule(s), 2 mask(s), 3 region(s), "
                                  "6 identities")
    assert json.loads(kolk("policy", "check", str(EXAMPLE), "--json").stdout)["version"] == 7


def test_check_prints_the_error_line_and_exits_1(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "policy.toml"
    bad.write_text(EXAMPLE.read_text().replace('actions = ["produce", "describe"]', 'actions = ["prodcue"]'))
    out = kolk("policy", "check", str(bad), expect=1)
    assert out.stdout == ""
    assert out.stderr == (f'{bad}:30: rule 2: actions: "prodcue" is not an action (one of produce, consume, '
                          'create, delete, describe, alter, use, admin, read, or * for all)\n')


def test_check_syntax_error_and_missing_file(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text('version = 1\n[[rule]\n')
    assert kolk("policy", "check", str(bad), expect=1).stderr.startswith(f"{bad}:2: TOML syntax: ")
    assert kolk("policy", "check", str(tmp_path / "nope.toml"), expect=1).stderr == (
        f"{tmp_path / 'nope.toml'}:1: no such file\n")


def test_check_prints_warnings_and_still_exits_0(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "p.toml"
    p.write_text('version = 3\n[identities]\nann = ["r", "spare"]\n[[rule]]\neffect = "allow"\nroles = ["r"]\n'
                 'actions = ["consume"]\nresources = ["topic:*"]\n')
    out = kolk("policy", "check", str(p))
    assert out.stderr == f"warning: {p}:3: identities: ann: role spare is used by no rule or mask\n"


def test_explain_names_the_deciding_rule() -> None:
    out = kolk("policy", "explain", str(EXAMPLE), "--identity", "alice", "--from", "10.1.2.3", "--action", "consume",
               "--resource", "topic:secret-plans").stdout.splitlines()
    assert out[0] == "DENIED: rule 5 (deny consume on topic:secret-*) matched role analyst from anywhere: denied"
    assert out[1] == f"rule 5 is at {EXAMPLE}:47: no one but operators reads secret topics"
    assert "identity alice: roles analyst" in out and "address 10.1.2.3: regions eu" in out


def test_explain_allowed_with_masks_as_json() -> None:
    out = json.loads(kolk("policy", "explain", str(EXAMPLE), "--identity", "bob", "--from", "::ffff:10.1.0.4",
                          "--action", "consume", "--resource", "topic:orders", "--json").stdout)
    assert (out["allowed"], out["rule"], out["roles"], out["regions"]) == (True, 3, ["producer", "analyst"], ["eu"])
    assert out["masks"][0] == {"field": "$.email", "with": "***"} and out["policy_version"] == 7


def test_explain_default_deny() -> None:
    out = kolk("policy", "explain", str(EXAMPLE), "--identity", "dave", "--from", "10.1.0.1", "--action",
               "describe", "--resource", "cluster")
    assert out.stdout.splitlines()[0] == ("DENIED: no rule allows describe on cluster for dave (no roles) from "
                                          "10.1.0.1 (regions eu): denied by default")


@pytest.mark.parametrize("option,value,message", [("--from", "somewhere", "is not an IP address"),
                                                  ("--resource", "orders", "is not a resource")])
def test_explain_refuses_a_bad_request(option: str, value: str, message: str) -> None:
    args = {"--identity": "a", "--from": "10.0.0.1", "--action": "consume", "--resource": "topic:x", option: value}
    out = kolk("policy", "explain", str(EXAMPLE), *[x for kv in args.items() for x in kv], expect=1)
    assert out.stderr.startswith("kolk policy explain: ") and message in out.stderr


def test_apply_and_show_on_a_real_sc(tmp_path: pathlib.Path) -> None:
    from jepsen.cluster import ScCluster, wait_for
    from kolk.client.admin import AdminClient, run

    # A plaintext SC stores a policy only when its operator says so (docs/security.md).
    c = ScCluster(str(tmp_path / "sc"), size=1, extra_args=("--insecure-allow-plaintext-policy",))
    c.start_all()
    try:
        wait_for(lambda: run(lambda: AdminClient(c.admin_addresses, timeout_s=2).cluster_status())["leader"], 30,
                 lambda: "an SC leader\n" + c.logs())
        sc = ["--sc", c.admin_addresses[0]]
        assert kolk("policy", "show", *sc).stdout == "no policy in force: everything is allowed for everyone\n"
        v1 = tmp_path / "v1.toml"
        v1.write_text('# everyone may do everything\nversion = 1\n[[rule]]\neffect = "allow"\nidentities = ["*"]\n'
                      'actions = ["*"]\nresources = ["*"]\n')
        assert kolk("policy", "apply", str(v1), *sc).stdout.startswith("policy version 1 applied (sha256 ")
        shown = kolk("policy", "show", *sc, "--json").stdout
        assert {k: json.loads(shown)[k] for k in ("version", "source")} == {"version": 1, "source": v1.read_text()}
        # The same version again, or an older one, is refused: a revoked policy cannot come back.
        assert kolk("policy", "apply", str(v1), *sc, expect=1).stderr == (
            f"{v1}:2: version: 1 is not higher than the version in force (1): raise it to apply this file\n")
        v2 = tmp_path / "v2.toml"
        v2.write_text(v1.read_text().replace("version = 1", "version = 2"))
        assert json.loads(kolk("policy", "apply", str(v2), *sc, "--json").stdout)["previous"] == 1
        assert "1 is not higher than the version in force (2)" in kolk("policy", "apply", str(v1), *sc, expect=1).stderr
        # A broken file is refused before anything is stored.
        bad = tmp_path / "bad.toml"
        bad.write_text(v2.read_text().replace("version = 2", "version = 3").replace('"allow"', '"alow"'))
        assert kolk("policy", "apply", str(bad), *sc, expect=1).stderr.startswith(f"{bad}:4: rule 1: effect: ")
        assert kolk("policy", "show", *sc).stdout.startswith("# policy version 2, sha256 ")
    finally:
        c.close()


def test_with_no_cluster_running_the_cli_says_so_at_once() -> None:
    """Nothing listens at the SC address: the CLI says there is no cluster and how to start one,
    in about two seconds, instead of retrying until its deadline."""
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there
    start = time.monotonic()
    out = kolk("policy", "show", "--sc", address, expect=1)
    elapsed = time.monotonic() - start
    assert out.stderr == (f"kolk policy show: no cluster is running at {address} (nothing is listening; start one "
                          "with `kolk cluster start`)\n")
    assert elapsed < 4.0, f"took {elapsed:.1f} s"  # ~1.5 s of refused connections, plus starting Python


@pytest.mark.parametrize("opener,closer", [("[", "]"), ("{a = ", "}")], ids=["array", "inline table"])
def test_a_deeply_nested_policy_is_one_line(tmp_path: pathlib.Path, opener: str, closer: str) -> None:
    """5,000 nested arrays (or inline tables) made tomllib recurse into a 3,002-line traceback:
    check and apply refuse the file with one line naming where it nests too deep, before
    anything is sent."""
    deep = tmp_path / "deep.toml"
    deep.write_text('version = 1\n# brackets in a comment do not count: [[[[[[[[\nx = "[[[[" \ny = '
                    + opener * 5000 + "1" + closer * 5000 + "\n")
    for command in (["policy", "check", str(deep)], ["policy", "apply", str(deep), "--sc", "127.0.0.1:1"]):
        out = kolk(*command, expect=1)
        assert out.stderr == f"{deep}:4: arrays and inline tables nest more than 32 deep\n", out.stderr[-500:]


def test_nesting_up_to_the_limit_is_left_to_the_policy_checks(tmp_path: pathlib.Path) -> None:
    """32 levels pass the nesting check; the policy's own checks then name the field."""
    ok = tmp_path / "ok.toml"
    ok.write_text("version = 1\ndescription = " + "[" * 32 + '"x"' + "]" * 32 + "\n")
    out = kolk("policy", "check", str(ok), expect=1)
    assert out.stderr == f"{ok}:2: description: must be a string\n", out.stderr


def test_show_on_a_tls_cluster_says_when_the_caller_may_not_read_the_policy(tmp_path: pathlib.Path) -> None:
    """kolk-admin (the CLI of `kolk cluster start --tls`) and bob on a real TLS cluster: with
    no policy, show says none; once one is in force that bob may not read, bob is told that a
    policy is in force and why he may not read it, exit 1, never "everything is allowed" or
    the source (docs/policy.md "Who may read the policy")."""
    from dataplane_cluster import DataPlaneCluster
    from kolk.client.admin import AdminClient, run
    from kolk.protocol.errors import PermissionDeniedError

    c = DataPlaneCluster(str(tmp_path / "c"), spus=0, tls=True, clients=("kolk-admin", "bob"))
    try:
        c.start()

        def as_(who: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
            p = c.pki[who]
            return kolk(*args, "--sc", c.sc_addresses[0], "--tls-ca", p["ca"], "--tls-cert", p["cert"],
                        "--tls-key", p["key"], expect=expect)

        for who in ("kolk-admin", "bob"):
            assert as_(who, "policy", "show").stdout == "no policy in force: everything is allowed for everyone\n"
            assert json.loads(as_(who, "policy", "show", "--json").stdout) is None
        source = tmp_path / "v1.toml"
        source.write_text('# SECRET-MARKER: who may do what\nversion = 1\n[identities]\nkolk-admin = ["ops"]\n'
                          'bob = ["reader"]\n[[rule]]\neffect = "allow"\nroles = ["ops"]\nactions = ["*"]\n'
                          'resources = ["*"]\n[[rule]]\neffect = "allow"\nroles = ["reader"]\nactions = ["consume"]\n'
                          'resources = ["topic:*"]\n')
        as_("kolk-admin", "policy", "apply", str(source))
        denied = ("a policy is in force but bob may not read it (denied: bob from 127.0.0.1 may not admin cluster: "
                  "no rule allows admin on cluster for bob (roles reader) from 127.0.0.1 (in no region): denied by "
                  "default (policy version 1))")
        for json_flag in ((), ("--json",)):
            out = as_("bob", "policy", "show", *json_flag, expect=1)
            assert (out.stdout, out.stderr) == ("", f"kolk policy show: {denied}\n")
        assert "SECRET-MARKER" in as_("kolk-admin", "policy", "show").stdout
        # Listing the kind is no way around it: an empty list would also say "no policy".
        with pytest.raises(PermissionDeniedError, match="^1 policy object\\(s\\) exist but bob may not read them "
                                                        "\\(denied: bob from 127.0.0.1 may not admin cluster: "):
            run(lambda: AdminClient(c.sc_addresses, timeout_s=10, tls=c.tls_for("bob")).list_objects("policy"))
    finally:
        c.close()
