"""What a newcomer's review of the ``kolk`` CLI found, each through the real CLI against a real
local cluster (``kolk cluster start --tls`` in a temporary $KOLK_HOME, with a policy in force):

1. a client certificate and key given always win over the local cluster's profile;
2. a stopped local cluster is an error, not a quiet fall back to 127.0.0.1:9003;
3. ``cluster start`` without --tls on a cluster created with --tls keeps TLS;
4. a closed stdout ends the command quietly (status 141);
5. ``produce --file`` draws its progress bar only on a terminal;
6. ``-p 5`` without --smartmodule hints at --partition;
7. ``produce`` to a missing topic fails before reading its input.
"""

from __future__ import annotations

import json
import os
import pathlib
import pty
import signal
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from kolk.security.certs import create_ca, issue, read_ca, write_pair

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
STOPPED = "the local cluster is stopped: run kolk cluster start, or pass --sc HOST:PORT"
POLICY = """version = 1
description = "the local admin may do anything; alice nothing"

[identities]
kolk-admin = ["admin"]

[[rule]]
description = "the local admin"
effect = "allow"
roles = ["admin"]
actions = ["*"]
resources = ["*"]
"""


def kolk(home: pathlib.Path, *args: str, env: dict[str, str] | None = None, stdin: Any = subprocess.DEVNULL,
         **kw: Any) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KOLK_")}
    options = {"capture_output": True, **kw}
    return subprocess.run([sys.executable, "-m", "kolk", *args], text=True, timeout=COMMAND_TIMEOUT_S,
                          cwd=str(ROOT), stdin=stdin, env={**base, "KOLK_HOME": str(home), **(env or {})}, **options)


def ok(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 0, (out.returncode, out.stdout, out.stderr)
    return out.stdout


def one_line(out: subprocess.CompletedProcess, status: int = 1) -> str:
    assert out.returncode == status, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr and out.stdout == "", (out.stdout, out.stderr)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def profile(home: pathlib.Path) -> dict[str, Any]:
    return json.loads((home / "profile.json").read_text())


def _stop_by_pid(home: pathlib.Path) -> None:
    """Whatever the profile names and still runs: SIGTERM, then SIGKILL after a deadline."""
    try:
        pids = list(profile(home).get("pids", {}).values())
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for pid in pids:
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}"):
            time.sleep(0.05)  # waiting on process exit, with a deadline
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def home(tmp_path_factory: Any) -> Iterator[pathlib.Path]:
    """A local TLS cluster (1 SC, 1 SPU) with topics a, b, c and a policy that allows only the
    profile's kolk-admin; stopped by `kolk cluster stop`, then by pid whatever is left."""
    h = tmp_path_factory.mktemp("home")
    try:
        ok(kolk(h, "cluster", "start", "--tls"))
        for t in ("a", "b", "c"):
            ok(kolk(h, "topic", "create", t))
        policy = h / "policy.toml"
        policy.write_text(POLICY)
        ok(kolk(h, "policy", "apply", str(policy)))
        yield h
    finally:
        if (h / "profile.json").exists() and profile(h).get("running"):
            kolk(h, "cluster", "stop")
        _stop_by_pid(h)


@pytest.fixture(scope="module")
def certs(home: pathlib.Path, tmp_path_factory: Any) -> dict[str, str]:
    """alice's client certificate from the local cluster's CA, and a stranger's from another CA."""
    d = tmp_path_factory.mktemp("certs")
    ca_cert, ca_key = read_ca(str(home / "local" / "pki"))
    alice = write_pair(str(d), "alice", *issue(ca_cert, ca_key, "alice", kind="client"))
    other_cert, other_key = create_ca("another CA")
    stranger = write_pair(str(d), "stranger", *issue(other_cert, other_key, "stranger", kind="client"))
    return {"alice_cert": alice[0], "alice_key": alice[1], "stranger_cert": stranger[0], "stranger_key": stranger[1]}


# ---------------------------------------------------------------- 1. a given certificate wins

def test_a_given_certificate_wins_over_the_profile(home: pathlib.Path, certs: dict[str, str]) -> None:
    assert "a" in ok(kolk(home, "topic", "list")).split()  # the profile's kolk-admin may
    alice = ["--tls-cert", certs["alice_cert"], "--tls-key", certs["alice_key"]]
    # alice, by flags and by environment: the CA comes from the profile, and the policy shows
    # her no topic and denies her a create.
    alice_env = {"KOLK_TLS_CERT": certs["alice_cert"], "KOLK_TLS_KEY": certs["alice_key"]}
    for flags, env in ((alice, None), ([], alice_env)):
        assert ok(kolk(home, "topic", "list", *flags, env=env)).split() == ["TOPIC", "PARTITIONS", "REPLICATION",
                                                                           "STATE"]
        line = one_line(kolk(home, "topic", "create", "z", *flags, env=env))
        assert line.startswith("kolk topic create: ") and "alice" in line, line
    # A certificate from another CA is sent (and refused), not replaced by the profile's.
    line = one_line(kolk(home, "topic", "list", "--tls-cert", certs["stranger_cert"],
                         "--tls-key", certs["stranger_key"]))
    assert "the server refused this client's certificate" in line, line
    # Half a pair is one line naming the missing flag, whatever else is given.
    sc = profile(home)["sc"]
    ca = profile(home)["tls"]["ca"]
    for extra in ([], ["--sc", sc], ["--sc", sc, "--tls-ca", ca]):
        assert one_line(kolk(home, "topic", "list", "--tls-cert", certs["alice_cert"], *extra)) == \
            "kolk topic list: --tls-cert needs --tls-key as well", extra
        assert one_line(kolk(home, "topic", "list", "--tls-key", certs["alice_key"], *extra)) == \
            "kolk topic list: --tls-key needs --tls-cert as well", extra
    assert one_line(kolk(home, "topic", "list", env={"KOLK_TLS_KEY": certs["alice_key"]})) == \
        "kolk topic list: --tls-key needs --tls-cert as well"
    # Without a local TLS cluster there is no CA to take: refused, not sent in plaintext.
    line = one_line(kolk(home.parent / "nowhere", "topic", "list", "--sc", sc, *alice))
    assert line == ("kolk topic list: --tls-cert and --tls-key need --tls-ca as well (no local cluster started "
                    "with --tls to take the CA from)"), line


# ---------------------------------------------------------------- 4. a closed stdout

def test_a_closed_stdout_ends_the_command_quietly(home: pathlib.Path) -> None:
    """`kolk topic list | head -2` where head has gone: status 141, nothing on stderr."""
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write: every write is EPIPE
    try:
        out = kolk(home, "topic", "list", stdout=w, capture_output=False, stderr=subprocess.PIPE)
    finally:
        os.close(w)
    assert out.returncode == 141, out.stderr
    assert out.stderr == "", out.stderr
    with_head = subprocess.run(f"{sys.executable} -m kolk topic list | head -2", shell=True, capture_output=True,
                               text=True, timeout=COMMAND_TIMEOUT_S, cwd=str(ROOT),
                               env={**os.environ, "KOLK_HOME": str(home)})
    assert with_head.stdout.splitlines()[0].split()[0] == "TOPIC" and with_head.stderr == "", with_head


# ---------------------------------------------------------------- 5. the progress bar

def test_the_progress_bar_is_drawn_only_on_a_terminal(home: pathlib.Path, tmp_path: pathlib.Path) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"record {i}\n" for i in range(2000)))
    out = kolk(home, "produce", "a", "--file", str(lines))
    assert ok(out) == "" and out.stderr == "produced 2000 record(s) to a\n", out.stderr
    # stderr a terminal: the bar is drawn (and ends at 100%).
    master, slave = pty.openpty()
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("KOLK_")}
        proc = subprocess.run([sys.executable, "-m", "kolk", "produce", "a", "--file", str(lines)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, cwd=str(ROOT),
                              env={**base, "KOLK_HOME": str(home)}, timeout=COMMAND_TIMEOUT_S)
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    assert proc.returncode == 0, seen
    assert b"100% 2000 records" in seen and b"produced 2000 record(s) to a" in seen, seen


# ---------------------------------------------------------------- 6. -p 5

def test_a_partition_number_given_to_p_gets_a_hint(tmp_path: pathlib.Path) -> None:
    for command in ("consume", "produce"):
        assert one_line(kolk(tmp_path, command, "logs", "-p", "5"), 2) == (
            f"kolk {command}: -p 5: a parameter follows the --smartmodule it belongs to (did you mean --partition 5?) "
            f"(see kolk {command} --help)")
    # Not a number: no hint.
    assert one_line(kolk(tmp_path, "consume", "logs", "-p", "k=v"), 2) == (
        "kolk consume: -p k=v: a parameter follows the --smartmodule it belongs to (see kolk consume --help)")


# ---------------------------------------------------------------- 7. produce to a missing topic

def test_produce_to_a_missing_topic_fails_before_reading_input(home: pathlib.Path) -> None:
    with_data = one_line(kolk(home, "produce", "nosuch", input="x\n", stdin=None))
    assert with_data == "kolk produce: topic nosuch does not exist"
    assert one_line(kolk(home, "produce", "nosuch")) == with_data  # stdin is /dev/null
    # A terminal that never types a line: the error comes at once, not after the input ends.
    master, slave = pty.openpty()
    try:
        out = kolk(home, "produce", "nosuch", stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert one_line(out) == with_data


# ---------------------------------------------------------------- 3. start keeps TLS

def test_cluster_start_without_tls_keeps_the_tls_of_the_cluster(home: pathlib.Path) -> None:
    ok(kolk(home, "produce", "b", input="kept\n", stdin=None))
    ok(kolk(home, "cluster", "stop"))
    out = kolk(home, "cluster", "start")
    assert ok(out).startswith("local cluster started"), out
    assert out.stderr == (f"kolk cluster start: the local cluster in {home / 'local'} was created with --tls: "
                          "started with TLS again\n"), out.stderr
    assert profile(home)["tls"]["cert"].endswith("kolk-admin.crt")
    # The policy still admits the admin (a plaintext start would deny every call) and the data is there.
    assert {"a", "b", "c"} <= set(ok(kolk(home, "topic", "list")).split())
    assert ok(kolk(home, "consume", "b", "-B", "-d")) == "kept\n"
    # Plaintext by explicit address is refused by the TLS cluster, not served.
    line = one_line(kolk(home, "topic", "list", "--sc", profile(home)["sc"]))
    assert "requires TLS" in line, line


# ---------------------------------------------------------------- 2. a stopped cluster

def test_a_stopped_local_cluster_is_an_error_not_a_fallback(home: pathlib.Path) -> None:
    """Last: it stops the module's cluster."""
    from kolk import Client
    from kolk.errors import ClusterUnavailableError, LocalClusterStoppedError

    ok(kolk(home, "cluster", "stop"))
    assert profile(home)["running"] is False
    for command in (["topic", "list"], ["cluster", "status"]):
        assert one_line(kolk(home, *command)) == f"kolk {' '.join(command)}: {STOPPED}"
    for command in (["produce", "a"], ["consume", "a", "-d"]):
        assert one_line(kolk(home, *command)) == f"kolk {command[0]}: {STOPPED}"
    # An explicit address is still used: the stopped SC's port refuses at once.
    line = one_line(kolk(home, "topic", "list", "--sc", profile(home)["sc"]))
    assert STOPPED not in line, line
    # The library: no address and a stopped local cluster is a typed error, before any thread.
    old = os.environ.get("KOLK_HOME")
    os.environ["KOLK_HOME"] = str(home)
    try:
        with pytest.raises(LocalClusterStoppedError) as e:
            Client()
    finally:
        if old is None:
            del os.environ["KOLK_HOME"]
        else:
            os.environ["KOLK_HOME"] = old
    assert isinstance(e.value, ClusterUnavailableError) and not e.value.retriable
    assert str(e.value) == ("the local cluster is stopped: run kolk cluster start, or give the client an SC "
                            "address (HOST:PORT)")
