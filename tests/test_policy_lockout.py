"""``kolk policy apply`` cannot lock its applier out by accident (docs/policy.md "Lockout"):
through a real SC with mutual TLS, the CLI as ``kolk-admin`` (the identity of a local
``kolk cluster start --tls``). A policy under which the applier, from its connection's
address, would not be allowed ``admin`` on ``cluster`` is refused with one line and nothing
changes; ``--allow-lockout`` applies it, and from then on the applier may neither read nor
change the policy."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any, Iterator

import pytest

from dataplane_cluster import DataPlaneCluster

ROOT = pathlib.Path(__file__).resolve().parent.parent
ADMIN = "kolk-admin"
ALLOW = "no rule allows admin on cluster for {who} ({roles}) from 127.0.0.1 (regions local): denied by default"

OPERATORS = """version = {version}
[regions]
local = ["127.0.0.0/8"]
eu = ["10.0.0.0/8"]
[identities]
kolk-admin = ["{role}"]
ops = ["operator"]
watcher = ["viewer"]
[[rule]]
effect = "allow"
roles = ["operator"]
actions = ["*"]
resources = ["cluster", "topic:*"]
{regions}
[[rule]]
effect = "allow"
roles = ["viewer"]
actions = ["describe"]
resources = ["cluster", "topic:*"]
"""


def policy_file(tmp: pathlib.Path, version: int, role: str = "operator", regions: str = "") -> str:
    path = tmp / f"v{version}.toml"
    path.write_text(OPERATORS.format(version=version, role=role, regions=regions))
    return str(path)


def kolk(c: DataPlaneCluster, as_: str, *args: str, expect: int = 0) -> subprocess.CompletedProcess:
    p = c.pki[as_]
    out = subprocess.run([sys.executable, "-m", "kolk", *args, "--sc", c.sc_addresses[0], "--tls-ca", p["ca"],
                          "--tls-cert", p["cert"], "--tls-key", p["key"]],
                         capture_output=True, text=True, timeout=120, cwd=str(ROOT), env=dict(os.environ, KOLK_SC=""))
    assert out.returncode == expect, (out.stdout, out.stderr)
    return out


def shown_version(c: DataPlaneCluster) -> Any:
    """The version in force, read as a node (which may always read the policy)."""
    from kolk.client.admin import AdminClient, run

    obj = run(lambda: AdminClient(c.sc_addresses, timeout_s=10, tls=c.tls_for("node")).get_object("policy", "active"))
    return obj and obj["spec"]["version"]


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[DataPlaneCluster]:
    c = DataPlaneCluster(str(tmp_path / "c"), spus=0, tls=True, clients=(ADMIN,))
    try:
        c.start()
        kolk(c, ADMIN, "policy", "apply", policy_file(tmp_path, 1))
        yield c
    finally:
        c.close()


def refusal(version: int, reason: str) -> str:
    return (f"kolk policy apply: policy version {version} would deny {ADMIN} from 127.0.0.1 admin on cluster "
            f"({reason}): you could not change it again; add {ADMIN} to a role with admin on cluster, or pass "
            "--allow-lockout\n")


def test_a_policy_without_admin_for_the_applier_is_refused(cluster: DataPlaneCluster, tmp_path: pathlib.Path) -> None:
    """kolk-admin demoted to viewer: refused with one line naming kolk-admin and the way out;
    version 1 stays in force and kolk-admin can still apply the next version."""
    out = kolk(cluster, ADMIN, "policy", "apply", policy_file(tmp_path, 2, role="viewer"), expect=1)
    assert (out.stdout, out.stderr) == ("", refusal(2, ALLOW.format(who=ADMIN, roles="roles viewer")))
    assert shown_version(cluster) == 1
    kolk(cluster, ADMIN, "policy", "apply", policy_file(tmp_path, 3))
    assert shown_version(cluster) == 3


def test_the_applier_s_address_decides(cluster: DataPlaneCluster, tmp_path: pathlib.Path) -> None:
    """Admin only from the eu network: kolk-admin connects from 127.0.0.1 (local), so the
    policy would lock it out and is refused, as every node would decide it."""
    out = kolk(cluster, ADMIN, "policy", "apply", policy_file(tmp_path, 2, regions='regions = ["eu"]'),
               "--json", expect=1)
    assert out.stdout == "" and out.stderr.startswith("kolk policy apply: policy version 2 would deny kolk-admin "
                                                      "from 127.0.0.1 admin on cluster (")
    assert "--allow-lockout" in out.stderr and out.stderr.count("\n") == 1
    assert shown_version(cluster) == 1


def test_allow_lockout_applies_it_and_the_applier_is_locked_out(cluster: DataPlaneCluster,
                                                               tmp_path: pathlib.Path) -> None:
    """With --allow-lockout the policy is applied; kolk-admin may then neither read the policy
    (told that one is in force, not its source) nor change it."""
    v2 = policy_file(tmp_path, 2, role="viewer")
    assert json.loads(kolk(cluster, ADMIN, "policy", "apply", v2, "--allow-lockout", "--json").stdout)["applied"] == 2
    assert shown_version(cluster) == 2
    out = kolk(cluster, ADMIN, "policy", "show", expect=1)
    assert out.stdout == "" and out.stderr.startswith(f"kolk policy show: a policy is in force but {ADMIN} may not "
                                                      "read it (denied: ")
    out = kolk(cluster, ADMIN, "policy", "apply", policy_file(tmp_path, 3), expect=1)
    assert "a policy is in force but kolk-admin may not read it" in out.stderr
    assert shown_version(cluster) == 2


def test_allow_lockout_on_a_policy_that_keeps_admin_just_applies(cluster: DataPlaneCluster,
                                                                 tmp_path: pathlib.Path) -> None:
    out = kolk(cluster, ADMIN, "policy", "apply", policy_file(tmp_path, 2), "--allow-lockout")
    assert out.stdout.startswith("policy version 2 applied (sha256 ") 
    assert all(line.startswith("warning: ") for line in out.stderr.splitlines())  # unused regions only
    kolk(cluster, ADMIN, "policy", "apply", policy_file(tmp_path, 3))  # still admin
    assert shown_version(cluster) == 3


def test_the_sc_refuses_a_lockout_from_any_client(cluster: DataPlaneCluster, tmp_path: pathlib.Path) -> None:
    """The guard is the SC's, not the CLI's: a client that skips the CLI gets the same line
    (code invalidArgument) unless its request sets allowLockout."""
    from kolk.client.admin import AdminClient, run
    from kolk.protocol.errors import KolkError
    from kolk.security.policy import parse_policy

    text = pathlib.Path(policy_file(tmp_path, 2, role="viewer")).read_text()
    spec = {"version": 2, "source": text, "sha256": parse_policy(text).sha256}
    def client() -> AdminClient:
        return AdminClient(cluster.sc_addresses, timeout_s=10, tls=cluster.tls_for(ADMIN))

    with pytest.raises(KolkError) as e:
        run(lambda: client().put_object("policy", "active", spec))
    assert e.value.code == "invalidArgument"
    assert str(e.value) == refusal(2, ALLOW.format(who=ADMIN, roles="roles viewer"))[len("kolk policy apply: "):-1]
    assert shown_version(cluster) == 1
    run(lambda: client().put_object("policy", "active", spec, allow_lockout=True))
    assert shown_version(cluster) == 2
