"""Data at rest is private to the user who runs Kolk, whatever the umask (issue 17, item 6):
every directory Kolk creates is 0700 and every file 0600, for the SC (Raft journal with the
policy source), the SPUs (segments holding records in clear, the RocksDB index, ``_audit``),
the local cluster's profile (the pids ``cluster stop`` kills), logs, and certificates.

A real ``kolk cluster start --tls`` runs under umask 000 (the worst a caller can hand it),
with records produced so that segments exist, and the test walks every file under
``$KOLK_HOME``.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import stat
import subprocess
import sys
import time
from typing import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT_S = 90


def kolk(home: pathlib.Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``kolk`` as a user with umask 000 runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOLK_")}
    return subprocess.run([sys.executable, "-m", "kolk", *args], capture_output=True, text=True, input=stdin,
                          timeout=COMMAND_TIMEOUT_S, cwd=str(home.parent), env={**env, "KOLK_HOME": str(home)},
                          preexec_fn=lambda: os.umask(0))


def open_to_others(top: pathlib.Path) -> list[str]:
    """Every directory not 0700 and every file not 0600 under ``top`` (itself included)."""
    wrong = []
    for path in [top, *top.rglob("*")]:
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            if mode != 0o700:
                wrong.append(f"{mode:04o} dir  {path}")
        elif stat.S_ISREG(st.st_mode):
            if mode != 0o600:
                wrong.append(f"{mode:04o} file {path}")
        else:
            wrong.append(f"{mode:04o} {stat.filemode(st.st_mode)} {path}")
    return wrong


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """A local TLS cluster (1 SC, 2 SPUs) started under umask 000, with a replicated topic
    holding records. Ports come from the OS (recorded where ``cluster start`` looks for them).
    Its ``local/`` and the SC's data directory exist beforehand, 0777 and 0755: start must
    tighten them."""
    home = tmp_path_factory.mktemp("at-rest") / "home"
    local = home / "local"
    os.makedirs(local / "sc")
    os.chmod(home, 0o777)
    os.chmod(local, 0o777)
    os.chmod(local / "sc", 0o755)
    ports = {"sc": _free_port(), "raft": _free_port(), "spu-1": _free_port(), "spu-2": _free_port()}
    (local / "ports.json").write_text(json.dumps(ports))
    os.chmod(local / "ports.json", 0o666)
    started = kolk(home, "cluster", "start", "--tls", "--spus", "2")
    try:
        assert started.returncode == 0, started.stderr
        created = kolk(home, "topic", "create", "cards", "-p", "2", "-r", "2")
        assert created.returncode == 0, created.stderr
        records = "".join(f"4111-1111-1111-{i:04d}\n" for i in range(200))
        produced = kolk(home, "produce", "cards", stdin=records)
        assert produced.returncode == 0, produced.stderr
        consumed = kolk(home, "consume", "cards", "-B", "-d", "--output", "raw")
        assert consumed.returncode == 0, consumed.stderr
        assert sorted(consumed.stdout.splitlines()) == sorted(records.splitlines())
        yield home
    finally:
        stopped = kolk(home, "cluster", "stop")
        if stopped.returncode != 0:  # stop by pid what the profile names, whatever went wrong
            profile = json.loads((home / "profile.json").read_text()) if (home / "profile.json").exists() else {}
            for pid in profile.get("pids", {}).values():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_every_file_of_a_running_cluster_is_private(cluster_home: pathlib.Path) -> None:
    """Segments, RocksDB, the Raft journal, _audit, logs, ready files, ports, the secret,
    the dev certificates and the profile: dirs 0700, files 0600, nothing else."""
    local = cluster_home / "local"
    segments = list(local.glob("spu-*/logs/cards-*/*.log"))
    assert len(segments) >= 2, sorted(str(p) for p in local.rglob("*"))
    assert any(b"4111-1111-1111-0000" in p.read_bytes() for p in segments)  # why it matters: records in clear
    assert list(local.glob("spu-*/logs/_audit-0/*.log")), "the _audit partition has a segment"
    assert list(local.glob("spu-*/index/CURRENT")), "RocksDB's files are there"
    assert (local / "sc" / "raft" / "journal.log").exists()
    assert (cluster_home / "profile.json").exists() and list(local.glob("pki/*.key"))
    assert open_to_others(cluster_home) == []


def test_an_existing_data_dir_is_tightened_and_logged(cluster_home: pathlib.Path) -> None:
    """The SC's data directory existed as 0755: the SC made it 0700 and said so once."""
    assert stat.S_IMODE((cluster_home / "local" / "sc").stat().st_mode) == 0o700
    log = (cluster_home / "local" / "logs" / "sc.log").read_text()
    assert log.count("was 0755, open to other users; now 0700") == 1, log[-2000:]


def test_the_profile_stays_private_after_stop(cluster_home: pathlib.Path) -> None:
    """``cluster stop`` rewrites the profile (running: false): still 0600 in a 0700 home.
    Runs last in this module (the fixture's finally stops it again, harmlessly)."""
    stopped = kolk(cluster_home, "cluster", "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads((cluster_home / "profile.json").read_text())["running"] is False
    assert open_to_others(cluster_home) == []


def test_kolk_cert_writes_private_files_in_a_private_dir(tmp_path: pathlib.Path) -> None:
    """``kolk cert ca`` and ``issue`` under umask 000: the directories they create are 0700,
    keys and certificates 0600 (one rule; copy ca.crt out to share it)."""
    home = tmp_path / "home"
    home.mkdir()
    for args in (["cert", "ca", "--out", str(tmp_path / "ca" / "nested")],
                 ["cert", "issue", "alice", "--kind", "client", "--ca", str(tmp_path / "ca" / "nested"), "--out",
                  str(tmp_path / "issued")]):
        out = kolk(home, *args)
        assert out.returncode == 0, out.stderr
    assert open_to_others(tmp_path / "ca") == []
    assert open_to_others(tmp_path / "issued") == []
    assert sorted(p.name for p in (tmp_path / "issued").iterdir()) == ["alice.crt", "alice.key"]


def test_a_server_started_under_umask_000_writes_private_files(tmp_path: pathlib.Path) -> None:
    """``kolk sc`` alone (not through cluster start, which sets the umask itself): its data
    directory, created by it, and everything in it are private."""
    secret = tmp_path / "secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"x" * 32)
    os.close(fd)
    data = tmp_path / "sc-data"
    ready = tmp_path / "sc.ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOLK_")}
    proc = subprocess.Popen([sys.executable, "-m", "kolk", "sc", "--id", "1", "--data-dir", str(data), "--raft",
                             f"127.0.0.1:{_free_port()}", "--admin", f"127.0.0.1:{_free_port()}", "--secret-file",
                             str(secret), "--ready-file", str(ready)], cwd=str(ROOT), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=lambda: os.umask(0))
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the SC did not become ready"
            time.sleep(0.02)  # polling a file with a deadline
        assert (data / "raft" / "journal.log").exists()
        assert open_to_others(data) == []
        assert stat.S_IMODE(ready.stat().st_mode) == 0o600
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("mode,after", [(0o777, 0o700), (0o775, 0o700), (0o755, 0o755), (0o1777, 0o1777),
                                        (0o700, 0o700)],
                         ids=["world-writable", "group-writable", "a home 0755", "sticky like /tmp", "private"])
def test_an_existing_kolk_home_is_changed_only_when_others_could_replace_the_profile(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, mode: int, after: int) -> None:
    """$KOLK_HOME may be the user's own directory (or /tmp): it is made 0700 only when group or
    others could write to it without the sticky bit; the profile itself is 0600 in every case."""
    from kolk.client.profile import write_profile

    home = tmp_path / "home"
    home.mkdir()
    os.chmod(home, mode)
    monkeypatch.setenv("KOLK_HOME", str(home))
    write_profile({"running": False})
    assert stat.S_IMODE(home.stat().st_mode) == after
    assert stat.S_IMODE((home / "profile.json").stat().st_mode) == 0o600
