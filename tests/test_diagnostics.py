"""`kolk cluster diagnostics` against real SC and SPU processes: one archive with every node's
versions, settings, logs and metrics and the metadata, and - read byte by byte - no private key
and no cluster secret in it, even where the test plants them in the cluster (a topic named
after the secret, an SPU whose rack is a private key). With TLS and without; a node that does
not answer is noted and the archive still written; a caller the policy does not let admin the
cluster, an SC where nothing listens and an --out directory that does not exist each get one
line and exit status 1, and no archive (docs/operations.md "Diagnostics")."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import stat
import subprocess
import sys
import tarfile
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from prometheus_client.parser import text_string_to_metric_families

from dataplane_cluster import DataPlaneCluster, free_port, read_text, run_async
from kolk.transport import SC, connect
from kolk.node.secret import write_secret_file
from kolk.security.policy import parse_policy

POLICY = """version = 1

[identities]
admin = ["admin"]
viewer = ["viewer"]

[[rule]]
effect = "allow"
roles = ["admin"]
actions = ["*"]
resources = ["topic:*", "smartmodule:*", "cluster"]

[[rule]]
effect = "allow"
roles = ["viewer"]
actions = ["describe"]
resources = ["topic:*", "cluster"]
"""
DOWN_SPU = 9  # registered, never started: the node that does not answer
CLI_TIMEOUT_S = 90


def _cluster(root: str, tls: bool) -> tuple[DataPlaneCluster, str]:
    """A cluster whose nodes read a fresh random cluster secret from a 0600 file."""
    os.makedirs(root, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    secret_file = os.path.join(root, "secret")
    write_secret_file(secret_file, secret)
    flags = ("--secret-file", secret_file)
    return DataPlaneCluster(root, spus=2, tls=tls, clients=("admin", "viewer"), sc_args=flags,
                            spu_args=flags), secret


def _kolk(*args: str, cwd: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, with a KOLK_HOME of its own (no local cluster profile)."""
    home = os.path.join(cwd, "home")
    os.makedirs(home, exist_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("KOLK_TLS_", "KOLK_SC"))}
    environ.pop("KOLK_CLUSTER_SECRET", None)
    environ.update(KOLK_HOME=home, **(env or {}))
    return subprocess.run([sys.executable, "-m", "kolk", *args], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S)


def _tls_flags(c: DataPlaneCluster, who: str) -> list[str]:
    p = c.pki[who]
    return ["--tls-ca", p["ca"], "--tls-cert", p["cert"], "--tls-key", p["key"]]


def _members(path: str) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _key_material(key_path: str) -> list[bytes]:
    """What of a private key file must never be in the archive: each base64 line of its PEM
    body of 16 characters or more, and its DER bytes."""
    pem = open(key_path, "rb").read()
    lines = [line.strip() for line in pem.splitlines() if len(line.strip()) >= 16 and not line.startswith(b"-----")]
    key = serialization.load_pem_private_key(pem, None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    body = base64.b64decode(b"".join(lines))
    assert lines and der and body
    return lines + [der, body]


def _assert_nothing_secret(members: dict[str, bytes], key_files: list[str], secret: str) -> None:
    forbidden = [("the cluster secret", secret.encode())]
    for path in key_files:
        forbidden += [(f"{os.path.basename(path)} material", m) for m in _key_material(path)]
    for name, data in members.items():
        for what, needle in forbidden:
            assert needle not in data, f"{what} is in {name}"
        assert b"PRIVATE KEY-----" not in data, f"a private key PEM block is in {name}"


def _check_archive(path: str, c: DataPlaneCluster, topics: list[str]) -> dict[str, bytes]:
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    members = _members(path)
    manifest = json.loads(members["manifest.json"])
    for node in ["sc-1", *(f"spu-{i}" for i in c.spus)]:
        for part in ("info.json", "log.txt", "metrics.txt"):
            assert f"nodes/{node}/{part}" in members, (node, part, sorted(members))
        info = json.loads(members[f"nodes/{node}/info.json"])
        assert info["node"] == node and info["pid"] > 0 and info["versions"]["kolk"]
        assert info["versions"]["pysyncobj"] and info["python"] and info["uptime_s"] >= 0
        assert info["settings"]["secret"] == "<redacted>"
        assert manifest["nodes"][node]["ok"] is True
        families = list(text_string_to_metric_families(members[f"nodes/{node}/metrics.txt"].decode()))
        assert families, f"{node} sent no metrics"
    named = {t["name"] for t in json.loads(members["metadata/topic.json"])}
    assert set(topics) <= named
    for kind in ("partition", "spu", "smartmodule", "policy", "config", "erasure"):
        assert isinstance(json.loads(members[f"metadata/{kind}.json"]), list)
    assert manifest["cli"]["versions"]["kolk"]
    return members


# ---------------------------------------------------------------- with TLS


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: Any) -> Any:
    root = str(tmp_path_factory.mktemp("diag-tls"))
    c, secret = _cluster(root, tls=True)
    try:
        c.start()

        async def setup() -> None:
            admin = c.client(as_="admin")
            try:
                for topic in ("orders", "payments", f"x-{secret}"):  # the secret in a topic's name, and its logs
                    await admin.create_topic(topic, 2, 1)
                text = POLICY
                await admin.admin.put_object("policy", "active", {"version": 1, "source": text,
                                                                  "sha256": parse_policy(text).sha256})
                # A private key where an operator might paste one by mistake: an SPU's rack.
                pem = open(c.pki["admin"]["key"]).read()
                await admin.admin.register_spu(DOWN_SPU, f"127.0.0.1:{free_port()}", None, pem)
            finally:
                await admin.close()
        run_async(setup)
        yield c, secret
    finally:
        c.close()


def test_tls_archive_has_every_node_and_no_key_or_secret(tls_cluster: Any, tmp_path: Any) -> None:
    c, secret = tls_cluster
    out = os.path.join(str(tmp_path), "diag.tar.gz")
    # The operator gives the CLI the cluster secret, so it is taken out of the metadata too (the
    # nodes take it out of what they send themselves: test_a_node_answers_without_its_secret).
    r = _kolk("cluster", "diagnostics", "--sc", c.sc_addresses[0], "--out", out, *_tls_flags(c, "admin"),
              cwd=str(tmp_path), env={"KOLK_CLUSTER_SECRET": secret})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == out and "of 4 nodes answered" in r.stdout, r.stdout
    members = _check_archive(out, c, ["orders", "payments"])
    # The SPU that is registered but not running: noted, and the rest is there.
    manifest = json.loads(members["manifest.json"])
    assert manifest["nodes"][f"spu-{DOWN_SPU}"]["ok"] is False
    assert re.search(rf"^spu-{DOWN_SPU} at 127\.0\.0\.1:\d+: .+", members["errors.txt"].decode(), re.M)
    # What the test planted was taken out, not left out: the topic is there, its name redacted.
    assert "x-<redacted>" in {t["name"] for t in json.loads(members["metadata/topic.json"])}
    spu = {s["spec"]["id"]: s for s in json.loads(members["metadata/spu.json"])}
    assert spu[DOWN_SPU]["spec"]["rack"].strip() == "<redacted>"
    # TLS files are named by path, never by content.
    settings = json.loads(members["nodes/spu-1/info.json"])["settings"]
    assert settings["tls"]["key_file"] == c.pki["node"]["key"]
    keys = [c.pki[n]["key"] for n in ("node", "admin", "viewer")]
    keys.append(os.path.join(os.path.dirname(c.pki["node"]["ca"]), "ca.key"))
    _assert_nothing_secret(members, [k for k in keys if os.path.exists(k)], secret)


def test_a_node_answers_without_its_secret_or_key(tls_cluster: Any) -> None:
    """The SC logged the topic named after the secret; its nodeDiagnostics answer has the line
    with the secret taken out, and nothing of its key, before any CLI redaction."""
    c, secret = tls_cluster
    assert f"topic x-{secret} created" in read_text(c.sc.nodes[1].log_path), "the plant should be in the SC's log"

    async def ask() -> str:
        conn = await connect(SC, c.sc_addresses[0], c.tls_for("admin"), 5)
        try:
            r = await conn.call("nodeDiagnostics", 20, logLines=0)
            assert r.result.ok, r.result.error.message
            return str(r.diagnosticsJson)
        finally:
            conn.close()
    text = run_async(ask)
    answer = json.loads(text)
    assert answer["info"]["node"] == "sc-1"
    assert any("topic x-<redacted> created" in line for line in answer["log_lines"]), answer["log_lines"][-20:]
    _assert_nothing_secret({"answer": text.encode()}, [c.pki["node"]["key"]], secret)


def test_an_identity_without_admin_gets_the_denial_and_no_archive(tls_cluster: Any, tmp_path: Any) -> None:
    c, _ = tls_cluster
    out = os.path.join(str(tmp_path), "denied.tar.gz")
    r = _kolk("cluster", "diagnostics", "--sc", c.sc_addresses[0], "--out", out, *_tls_flags(c, "viewer"),
              cwd=str(tmp_path))
    assert r.returncode == 1, r.stdout
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("kolk cluster diagnostics: "), r.stderr
    assert "viewer" in line and "may not admin cluster" in line, line
    assert os.listdir(str(tmp_path)) == ["home"]  # no archive, not even a partial one


# ---------------------------------------------------------------- without TLS


@pytest.fixture(scope="module")
def plain_cluster(tmp_path_factory: Any) -> Any:
    root = str(tmp_path_factory.mktemp("diag-plain"))
    c, secret = _cluster(root, tls=False)
    try:
        c.start()

        async def setup() -> None:
            admin = c.client()
            try:
                await admin.create_topic("clicks", 1, 2)
            finally:
                await admin.close()
        run_async(setup)
        yield c, secret
    finally:
        c.close()


def test_plaintext_archive_in_the_current_directory(plain_cluster: Any, tmp_path: Any) -> None:
    c, secret = plain_cluster
    r = _kolk("cluster", "diagnostics", "--sc", c.sc_addresses[0], "--lines", "50", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    path = r.stdout.splitlines()[0]
    assert os.path.dirname(path) == str(tmp_path)
    assert re.fullmatch(r"kolk-diagnostics-\d{8}T\d{6}Z\.tar\.gz", os.path.basename(path)), path
    assert "3 of 3 nodes answered" in r.stdout and "no errors" in r.stdout, r.stdout
    members = _check_archive(path, c, ["clicks"])
    assert "errors.txt" not in members
    for node in ("sc-1", "spu-1", "spu-2"):
        assert members[f"nodes/{node}/log.txt"].count(b"\n") <= 51
    _assert_nothing_secret(members, [], secret)


# ---------------------------------------------------------------- bad input


def test_nothing_listening_at_the_sc_is_one_line(tmp_path: Any) -> None:
    r = _kolk("cluster", "diagnostics", "--sc", f"127.0.0.1:{free_port()}", "--out", "x.tar.gz", cwd=str(tmp_path))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no cluster is running at 127.0.0.1:" in r.stderr, r.stderr
    assert os.listdir(str(tmp_path)) == ["home"]


def test_out_in_a_missing_directory_is_one_line(tmp_path: Any) -> None:
    out = os.path.join(str(tmp_path), "nope", "d.tar.gz")
    r = _kolk("cluster", "diagnostics", "--sc", f"127.0.0.1:{free_port()}", "--out", out, cwd=str(tmp_path))
    assert r.returncode == 1
    assert r.stderr == (f"kolk cluster diagnostics: --out {out}: the directory {os.path.dirname(out)} does not "
                        "exist\n")


def test_out_that_is_a_directory_is_one_line(tmp_path: Any) -> None:
    r = _kolk("cluster", "diagnostics", "--sc", f"127.0.0.1:{free_port()}", "--out", str(tmp_path), cwd=str(tmp_path))
    assert r.returncode == 1
    assert r.stderr == f"kolk cluster diagnostics: --out {tmp_path} is a directory; name the archive file to write\n"


@pytest.mark.parametrize("lines,why", [("0", "0 is out of range: 1 to 5000"),
                                       ("5001", "5001 is out of range: 1 to 5000"),
                                       ("many", "'many' is not a whole number")])
def test_lines_out_of_range_is_a_usage_line(lines: str, why: str, tmp_path: Any) -> None:
    r = _kolk("cluster", "diagnostics", "--sc", "127.0.0.1:1", "--lines", lines, cwd=str(tmp_path))
    assert r.returncode == 2
    assert r.stderr == (f"kolk cluster diagnostics: argument --lines: {why} (see kolk cluster diagnostics --help)\n")


def test_the_archive_is_private_and_whole_or_absent(tmp_path: Any) -> None:
    """Written beside its name and renamed into place: an existing file is replaced by a 0600
    one; an aborted archive leaves nothing; a leftover in the way is named, never reused."""
    from kolk.cli.diagnostics_archive import Archive
    from kolk.protocol.errors import KolkError

    out = os.path.join(str(tmp_path), "d.tar.gz")
    with open(out, "w") as f:
        f.write("old")
    os.chmod(out, 0o644)
    a = Archive(out)
    a.add("manifest.json", b"{}")
    a.close()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600 and _members(out) == {"manifest.json": b"{}"}
    gone = os.path.join(str(tmp_path), "gone.tar.gz")
    a = Archive(gone)
    a.add("x", b"y")
    a.abort()
    assert sorted(os.listdir(str(tmp_path))) == ["d.tar.gz"]
    os.symlink("/etc/passwd", f"{gone}.part-{os.getpid()}")
    with pytest.raises(KolkError, match=r"^--out .*gone\.tar\.gz: cannot create .*\.part-\d+: File exists$"):
        Archive(gone)
