"""Every bad number or file given to the ``kolk`` CLI is one line on stderr, never a traceback,
and a number is refused before anything is sent (issue 17, item 7). A TLS refusal is reported
at once, not retried until the admin client's deadline.

Each bad input has its own case. The "nothing was sent" cases point the CLI at a socket this
test listens on and check afterwards that nobody connected to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from kolk.client.admin import AdminClient
from kolk.protocol.errors import InvalidRequestError
from kolk.security.certs import create_ca, dev_pki, issue, write_pair

ROOT = pathlib.Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 30.0
TLS_REFUSAL_DEADLINE_S = 3.0  # the admin client's own deadline is 15 s: a retry loop fails this


def kolk(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KOLK_")}
    return subprocess.run([sys.executable, "-m", "kolk", *args], capture_output=True, text=True, timeout=timeout_s,
                          cwd=str(ROOT), env={**base, **(env or {})}, stdin=subprocess.DEVNULL)


def one_line(out: subprocess.CompletedProcess, status: int) -> str:
    """The single stderr line of a failed command; asserts the status, no output and no traceback."""
    assert out.returncode == status, (out.returncode, out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.stdout == "", out.stdout
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """An address something listens on, and that socket: a CLI that sent anything connected."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    try:
        yield f"127.0.0.1:{s.getsockname()[1]}", s
    finally:
        s.close()


def nobody_connected(s: socket.socket) -> bool:
    try:
        conn, _ = s.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


# ---------------------------------------------------------------- numbers

BIG = str(10**30)
HUGE = str(2**70)
NUMBERS = [
    (["topic", "create", "t", "-p", BIG], f"kolk topic create: argument -p/--partitions: {BIG} is out of range: "
                                          "1 to 1000 (see kolk topic create --help)"),
    (["topic", "create", "t", "-p", "-1"], "kolk topic create: argument -p/--partitions: -1 is out of range: 1 to 1000"
                                           " (see kolk topic create --help)"),
    (["topic", "create", "t", "-p", "0"], "kolk topic create: argument -p/--partitions: 0 is out of range: 1 to 1000 "
                                          "(see kolk topic create --help)"),
    (["topic", "create", "t", "-p", "many"], "kolk topic create: argument -p/--partitions: 'many' is not a whole "
                                             "number (see kolk topic create --help)"),
    (["topic", "create", "t", "-r", HUGE], f"kolk topic create: argument -r/--replication: {HUGE} is out of range: "
                                           "1 to 7 (see kolk topic create --help)"),
    (["topic", "create", "t", "-r", "0"], "kolk topic create: argument -r/--replication: 0 is out of range: 1 to 7 "
                                          "(see kolk topic create --help)"),
    (["topic", "create", "t", "-r", "8"], "kolk topic create: argument -r/--replication: 8 is out of range: 1 to 7 "
                                          "(see kolk topic create --help)"),
    (["partition", "elect", "t-0", "--leader", "-3"], "kolk partition elect: argument --leader: -3 is out of range: "
                                                      "0 to 2147483647 (see kolk partition elect --help)"),
    (["cluster", "spu", "register", "--id", HUGE, "--public", "127.0.0.1:1"],
     f"kolk cluster spu register: argument --id: {HUGE} is out of range: 0 to 2147483647 "
     "(see kolk cluster spu register --help)"),
    (["cluster", "spu", "unregister", "--id", "-1"], "kolk cluster spu unregister: argument --id: -1 is out of range: "
                                                     "0 to 2147483647 (see kolk cluster spu unregister --help)"),
    (["produce", "t", "--partition", "-1"], "kolk produce: argument --partition: -1 is out of range: 0 to 999 "
                                            "(see kolk produce --help)"),
    (["produce", "t", "--linger-ms", "nan"], "kolk produce: argument --linger-ms: nan is out of range: 0 to 60000 "
                                             "(see kolk produce --help)"),
    (["consume", "t", "--offset", HUGE], f"kolk consume: argument --offset: {HUGE} is out of range: "
                                         f"0 to {2**63 - 1} (see kolk consume --help)"),
    (["consume", "t", "--tail", "-5"], f"kolk consume: argument --tail: -5 is out of range: 0 to {2**63 - 1} "
                                       "(see kolk consume --help)"),
    (["consume", "t", "--max", "0"], f"kolk consume: argument --max: 0 is out of range: 1 to {2**63 - 1} "
                                     "(see kolk consume --help)"),
    (["consume", "t", "--partition", BIG], f"kolk consume: argument --partition: {BIG} is out of range: 0 to 999 "
                                           "(see kolk consume --help)"),
]


@pytest.mark.parametrize("args,line", NUMBERS, ids=[" ".join(a[:2] + a[-2:]) for a, _ in NUMBERS])
def test_a_bad_number_is_one_line_and_nothing_is_sent(args: list[str], line: str,
                                                      listener: tuple[str, socket.socket]) -> None:
    address, sock = listener
    out = kolk(*args, "--sc", address)
    assert one_line(out, 2) == line
    assert "may or may not" not in out.stderr
    assert nobody_connected(sock), "the CLI connected although the number was refused"


def test_a_timestamp_out_of_range_is_one_line_and_nothing_is_sent(listener: tuple[str, socket.socket]) -> None:
    """--from-timestamp takes milliseconds or ISO 8601, so it is checked after parsing (exit 1)."""
    address, sock = listener
    out = kolk("consume", "t", "--from-timestamp", BIG, "--sc", address)
    assert one_line(out, 1) == (f"kolk consume: --from-timestamp {BIG} is out of range: milliseconds from "
                                f"{-2**63} to {2**63 - 1}")
    assert nobody_connected(sock)


@pytest.mark.parametrize("args,line", [
    (["cluster", "start", "--spus", "17"], "kolk cluster start: argument --spus: 17 is out of range: 1 to 16 "
                                           "(see kolk cluster start --help)"),
    (["cert", "ca", "--out", "x", "--days", BIG], f"kolk cert ca: argument --days: {BIG} is out of range: 1 to 36500 "
                                                  "(see kolk cert ca --help)"),
    (["cert", "issue", "n", "--ca", "x", "--out", "x", "--kind", "client", "--days", "0"],
     "kolk cert issue: argument --days: 0 is out of range: 1 to 36500 (see kolk cert issue --help)"),
], ids=["cluster start --spus", "cert ca --days", "cert issue --days"])
def test_local_commands_refuse_bad_numbers_before_touching_anything(args: list[str], line: str,
                                                                    tmp_path: pathlib.Path) -> None:
    out = subprocess.run([sys.executable, "-m", "kolk", *args], capture_output=True, text=True, timeout=60,
                         cwd=str(tmp_path), env={**os.environ, "KOLK_HOME": str(tmp_path / "home")})
    assert one_line(out, 2) == line
    assert os.listdir(tmp_path) == [], "the refused command created files"


def test_the_admin_client_checks_a_topic_before_sending(listener: tuple[str, socket.socket]) -> None:
    """The library refuses what the CLI refuses, with InvalidRequestError, before connecting."""
    address, sock = listener

    async def body() -> None:
        client = AdminClient(address, timeout_s=2)
        for partitions, replication, words in ((10**30, 1, "partitions must be 1-1000"),
                                               (-1, 1, "partitions must be 1-1000, got -1"),
                                               (1, 2**70, "replication factor must be 1-7"),
                                               (1, 0, "replication factor must be 1-7, got 0")):
            with pytest.raises(InvalidRequestError, match=words) as e:
                await client.create_topic("t", partitions, replication)
            assert not e.value.outcome_unknown and "may or may not" not in str(e.value)
        await client.close()
    asyncio.run(body())
    assert nobody_connected(sock)


# ---------------------------------------------------------------- TLS files


@pytest.fixture(scope="module")
def pki(tmp_path_factory: Any) -> dict[str, str]:
    """Good files, and one bad file of each kind."""
    d = tmp_path_factory.mktemp("pki")
    paths = dev_pki(str(d), nodes=["node"], clients=["alice", "bob"])
    files = {"ca": paths["alice"]["ca"], "cert": paths["alice"]["cert"], "key": paths["alice"]["key"],
             "node_cert": paths["node"]["cert"], "node_key": paths["node"]["key"],
             "other_key": paths["bob"]["key"], "dir": str(d), "missing": str(d / "missing.pem")}
    (d / "notpem.txt").write_text("hello, I am not a certificate\n")
    (d / "binary.der").write_bytes(bytes(range(256)))
    (d / "huge.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\n" + b"A" * (2 << 20))
    key_text = pathlib.Path(files["key"]).read_text()
    (d / "encrypted.key").write_text(key_text.replace("BEGIN PRIVATE KEY", "BEGIN ENCRYPTED PRIVATE KEY")
                                     .replace("END PRIVATE KEY", "END ENCRYPTED PRIVATE KEY"))
    sock_path = d / "a.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock_path))
    s.close()
    files.update(notpem=str(d / "notpem.txt"), binary=str(d / "binary.der"), huge=str(d / "huge.pem"),
                 encrypted=str(d / "encrypted.key"), socket=str(sock_path))
    return files


def _bad_tls_files(p: dict[str, str]) -> list[tuple[str, tuple[str, str, str], str]]:
    ca, cert, key = p["ca"], p["cert"], p["key"]
    return [
        ("ca missing", (p["missing"], cert, key), f"--tls-ca {p['missing']}: no such file"),
        ("ca a directory", (p["dir"], cert, key), f"--tls-ca {p['dir']}: is a directory, not a file"),
        ("ca not PEM", (p["notpem"], cert, key),
         f"--tls-ca {p['notpem']}: not a PEM certificate (no BEGIN CERTIFICATE block)"),
        ("ca binary", (p["binary"], cert, key),
         f"--tls-ca {p['binary']}: not a PEM file (binary data; DER is not accepted)"),
        ("ca too large", (p["huge"], cert, key), f"--tls-ca {p['huge']}: {os.path.getsize(p['huge'])} bytes, more "
                                                 "than a PEM file holds (1048576 bytes at most)"),
        ("ca unreadable", (p["socket"], cert, key), f"--tls-ca {p['socket']}: cannot be read: No such device or "
                                                    "address"),
        ("cert missing", (ca, p["missing"], key), f"--tls-cert {p['missing']}: no such file"),
        ("cert a directory", (ca, p["dir"], key), f"--tls-cert {p['dir']}: is a directory, not a file"),
        ("cert is a key", (ca, key, key), f"--tls-cert {key}: not a PEM certificate (no BEGIN CERTIFICATE block)"),
        ("key missing", (ca, cert, p["missing"]), f"--tls-key {p['missing']}: no such file"),
        ("key not PEM", (ca, cert, p["notpem"]),
         f"--tls-key {p['notpem']}: not a PEM private key (no BEGIN ... PRIVATE KEY block)"),
        ("key is a certificate", (ca, cert, cert),
         f"--tls-key {cert}: not a PEM private key (no BEGIN ... PRIVATE KEY block)"),
        ("key encrypted", (ca, cert, p["encrypted"]),
         f"--tls-key {p['encrypted']}: the key is encrypted; give an unencrypted key (kept 0600)"),
        ("key of another certificate", (ca, cert, p["other_key"]),
         f"--tls-key {p['other_key']} does not match --tls-cert {cert}: the key belongs to another certificate"),
    ]


BAD_TLS_CASES = ["ca missing", "ca a directory", "ca not PEM", "ca binary", "ca too large", "ca unreadable",
                 "cert missing", "cert a directory", "cert is a key", "key missing", "key not PEM",
                 "key is a certificate", "key encrypted", "key of another certificate"]


@pytest.mark.parametrize("case", BAD_TLS_CASES)
def test_a_client_command_names_the_bad_tls_file(case: str, pki: dict[str, str],
                                                 listener: tuple[str, socket.socket]) -> None:
    (ca, cert, key), line = {c: (f, l) for c, f, l in _bad_tls_files(pki)}[case]
    address, sock = listener
    out = kolk("topic", "list", "--sc", address, "--tls-ca", ca, "--tls-cert", cert, "--tls-key", key)
    assert one_line(out, 1) == f"kolk topic list: {line}"
    assert nobody_connected(sock)


@pytest.mark.parametrize("case", ["ca not PEM", "cert is a key", "key of another certificate", "key encrypted"])
def test_the_other_client_commands_name_the_bad_tls_file(case: str, pki: dict[str, str],
                                                         listener: tuple[str, socket.socket]) -> None:
    (ca, cert, key), line = {c: (f, l) for c, f, l in _bad_tls_files(pki)}[case]
    address, _ = listener
    tls = ["--sc", address, "--tls-ca", ca, "--tls-cert", cert, "--tls-key", key]
    for command in (["consume", "t", "-d"], ["produce", "t"], ["policy", "show"], ["smartmodule", "list"]):
        out = kolk(*command, *tls)
        assert one_line(out, 1).endswith(line), (command, out.stderr)


def _bad_server_files(p: dict[str, str], case: str) -> tuple[tuple[str, str, str], str]:
    ca, cert, key = p["ca"], p["node_cert"], p["node_key"]
    return {
        "ca missing": ((p["missing"], cert, key), f"--tls-ca {p['missing']}: no such file"),
        "ca not PEM": ((p["notpem"], cert, key),
                       f"--tls-ca {p['notpem']}: not a PEM certificate (no BEGIN CERTIFICATE block)"),
        "cert a directory": ((ca, p["dir"], key), f"--tls-cert {p['dir']}: is a directory, not a file"),
        "key is a certificate": ((ca, cert, cert),
                                 f"--tls-key {cert}: not a PEM private key (no BEGIN ... PRIVATE KEY block)"),
        "key of another certificate": ((ca, cert, p["key"]), f"--tls-key {p['key']} does not match --tls-cert "
                                                             f"{cert}: the key belongs to another certificate"),
    }[case]


@pytest.mark.parametrize("server", ["sc", "spu"])
@pytest.mark.parametrize("case", ["ca missing", "ca not PEM", "cert a directory", "key is a certificate",
                                  "key of another certificate"])
def test_a_server_names_the_bad_tls_file_and_creates_nothing(server: str, case: str, pki: dict[str, str],
                                                             tmp_path: pathlib.Path) -> None:
    (ca, cert, key), line = _bad_server_files(pki, case)
    data = tmp_path / "data"
    secret = tmp_path / "secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"s" * 32)
    os.close(fd)
    if server == "sc":
        args = ["sc", "--id", "1", "--data-dir", str(data), "--raft", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                "--secret-file", str(secret)]
    else:
        args = ["spu", "--id", "1", "--data-dir", str(data), "--sc", "127.0.0.1:1", "--public", "127.0.0.1:0"]
    out = kolk(*args, "--tls-ca", ca, "--tls-cert", cert, "--tls-key", key)
    assert one_line(out, 1) == f"kolk {server}: {line}"
    assert not data.exists()


# ---------------------------------------------------------------- TLS refusals are not retried


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_scs(tmp_path_factory: Any, pki: dict[str, str]) -> Iterator[dict[str, str]]:
    """A TLS SC and a plaintext SC, each a real process, stopped by pid."""
    root = tmp_path_factory.mktemp("scs")
    secret = root / "secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"t" * 32)
    os.close(fd)
    procs: list[subprocess.Popen] = []
    addresses = {}
    try:
        for name, tls in (("tls", ["--tls-ca", pki["ca"], "--tls-cert", pki["node_cert"], "--tls-key",
                                   pki["node_key"]]), ("plain", [])):
            admin = f"127.0.0.1:{_free_port()}"
            ready = root / f"{name}.ready"
            log = open(root / f"{name}.log", "wb")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "kolk", "sc", "--id", "1", "--data-dir", str(root / name), "--raft",
                 f"127.0.0.1:{_free_port()}", "--admin", admin, "--secret-file", str(secret), "--ready-file",
                 str(ready), *tls], stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT)))
            log.close()
            deadline = time.monotonic() + START_TIMEOUT_S
            while not ready.exists():
                assert procs[-1].poll() is None, (root / f"{name}.log").read_text()
                assert time.monotonic() < deadline, f"the {name} SC did not start"
                time.sleep(0.02)  # polling a file with a deadline
            addresses[name] = admin
        yield addresses
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _stranger(pki: dict[str, str]) -> tuple[str, str, str]:
    """A client certificate from another CA, and that CA."""
    d = os.path.join(pki["dir"], "stranger")
    if not os.path.exists(os.path.join(d, "ca.crt")):
        ca_cert, ca_key = create_ca("another CA")
        write_pair(d, "ca", ca_cert, ca_key)
        write_pair(d, "stranger", *issue(ca_cert, ca_key, "stranger", kind="client"))
    return os.path.join(d, "ca.crt"), os.path.join(d, "stranger.crt"), os.path.join(d, "stranger.key")


REFUSALS = {
    "no client certificate": "this client sent no certificate, and the server requires one",
    "client certificate from another CA": "the server refused this client's certificate",
    "server certificate not trusted": "the certificate is not signed by the trusted CA",
    "plaintext client, TLS server": "requires TLS and this client connected without it",
    "TLS client, plaintext server": "TLS to ",
}


@pytest.mark.parametrize("case", list(REFUSALS))
@pytest.mark.parametrize("command", [["topic", "list"], ["topic", "create", "t1"]], ids=["read", "write"])
def test_a_tls_refusal_prints_at_once(case: str, command: list[str], two_scs: dict[str, str],
                                      pki: dict[str, str]) -> None:
    other_ca, s_cert, s_key = _stranger(pki)
    flags = {
        "no client certificate": ["--sc", two_scs["tls"], "--tls-ca", pki["ca"]],
        "client certificate from another CA": ["--sc", two_scs["tls"], "--tls-ca", pki["ca"], "--tls-cert", s_cert,
                                               "--tls-key", s_key],
        "server certificate not trusted": ["--sc", two_scs["tls"], "--tls-ca", other_ca, "--tls-cert", s_cert,
                                           "--tls-key", s_key],
        "plaintext client, TLS server": ["--sc", two_scs["tls"]],
        "TLS client, plaintext server": ["--sc", two_scs["plain"], "--tls-ca", pki["ca"], "--tls-cert", pki["cert"],
                                         "--tls-key", pki["key"]],
    }[case]
    start = time.monotonic()
    out = kolk(*command, *flags)
    elapsed = time.monotonic() - start
    line = one_line(out, 1)
    assert REFUSALS[case] in line, line
    assert "may or may not" not in line
    assert elapsed < TLS_REFUSAL_DEADLINE_S, f"{case}: {elapsed:.1f} s: {line}"


def test_the_admin_client_does_not_retry_a_tls_refusal(two_scs: dict[str, str], pki: dict[str, str]) -> None:
    """The library itself, not only the CLI: one attempt, well within its 15 s deadline."""
    from kolk.protocol.errors import ClusterUnavailableError
    from kolk.security.tls import TlsConfig

    async def body() -> None:
        for tls, address in ((TlsConfig(pki["ca"]), two_scs["tls"]), (None, two_scs["tls"])):
            client = AdminClient(address, timeout_s=15, tls=tls)
            start = time.monotonic()
            with pytest.raises(ClusterUnavailableError) as e:
                await client.list_topics()
            assert not e.value.retriable
            assert time.monotonic() - start < 1.0, str(e.value)
            await client.close()
    asyncio.run(body())


def test_a_good_client_still_works_on_both(two_scs: dict[str, str], pki: dict[str, str]) -> None:
    """The checks above refuse only what is wrong."""
    tls = ["--tls-ca", pki["ca"], "--tls-cert", pki["cert"], "--tls-key", pki["key"]]
    for flags in (["--sc", two_scs["tls"], *tls], ["--sc", two_scs["plain"]]):
        out = kolk("topic", "list", "--json", *flags)
        assert out.returncode == 0, out.stderr
        assert isinstance(json.loads(out.stdout), list)


def test_the_library_does_not_retry_a_tls_file_it_cannot_read(pki: dict[str, str],
                                                              listener: tuple[str, socket.socket]) -> None:
    """A TlsConfig naming a missing file fails the first call at once (not retriable), instead
    of being taken for a network problem and retried until the deadline."""
    from kolk.protocol.errors import ClusterUnavailableError
    from kolk.security.tls import TlsConfig

    address, sock = listener

    async def body() -> None:
        client = AdminClient(address, timeout_s=15, tls=TlsConfig(pki["missing"], pki["cert"], pki["key"]))
        start = time.monotonic()
        with pytest.raises(ClusterUnavailableError, match="cannot read .*No such file") as e:
            await client.list_topics()
        assert not e.value.retriable and time.monotonic() - start < 1.0
        await client.close()
    asyncio.run(body())
    assert nobody_connected(sock)


@pytest.mark.parametrize("broken", ["ca.crt", "ca.key"])
def test_cluster_start_names_a_broken_dev_certificate(broken: str, tmp_path: pathlib.Path) -> None:
    """``kolk cluster start --tls`` reuses local/pki; a file there that is not what it should be
    is one line naming it, and no process is started."""
    pki_dir = tmp_path / "home" / "local" / "pki"
    dev_pki(str(pki_dir), nodes=["kolk-node"], clients=["kolk-admin"])
    (pki_dir / broken).write_text("not PEM\n")
    out = kolk("cluster", "start", "--tls", env={"KOLK_HOME": str(tmp_path / "home")})
    line = one_line(out, 1)
    assert line.startswith(f"kolk cluster start: {pki_dir / 'ca'}") and str(pki_dir / broken) in line, line
    assert not (tmp_path / "home" / "profile.json").exists()
    assert not list((tmp_path / "home" / "local" / "logs").iterdir())


# ---------------------------------------------------------------- addresses (issue 17, F4)

ADDRESS_DEADLINE_S = 5.0  # a bad address is refused before any connection or name lookup
BAD_ADDRESSES = [
    (["consume", "orders"], "127.0.0.1:99999",
     "kolk consume: invalid address '127.0.0.1:99999': the port must be a number from 1 to 65535, not 99999"),
    (["topic", "list"], "127.0.0.1:99999",
     "kolk topic list: invalid address '127.0.0.1:99999': the port must be a number from 1 to 65535, not 99999"),
    (["topic", "list"], "127.0.0.1:0",
     "kolk topic list: invalid address '127.0.0.1:0': the port must be a number from 1 to 65535, not 0"),
    (["topic", "list"], ":", "kolk topic list: invalid address ':': the port must be a number from 1 to 65535, not ''"),
    (["topic", "list"], "127.0.0.1", "kolk topic list: invalid address '127.0.0.1': expected HOST:PORT, such as "
                                     "127.0.0.1:9003 (no port)"),
    (["topic", "list"], ":9003", "kolk topic list: invalid address ':9003': no host before the port"),
    (["topic", "list"], "[::1", "kolk topic list: invalid address '[::1': unbalanced brackets around the IPv6 host"),
    (["topic", "list"], "[::g]:1", "kolk topic list: invalid address '[::g]:1': '::g' is not an IPv6 address"),
    (["topic", "list"], "::1:9003", "kolk topic list: invalid address '::1:9003': an IPv6 host must be in brackets, "
                                    "as [::1]:9003"),
    (["consume", "orders"], "256.1.1.1:1", "kolk consume: invalid address '256.1.1.1:1': '256.1.1.1' is not an "
                                           "IPv4 address"),
    (["topic", "list"], "bad host!:1", "kolk topic list: invalid address 'bad host!:1': 'bad host!' is not a host "
                                       "name (letters, digits, hyphens, underscores and dots)"),
    (["topic", "list"], ",", "kolk topic list: at least one SC address (HOST:PORT) is needed"),
]


@pytest.mark.parametrize("command,address,line", BAD_ADDRESSES,
                         ids=[f"{' '.join(c)} {a}" for c, a, _ in BAD_ADDRESSES])
def test_a_bad_sc_address_is_one_line_at_once(command: list[str], address: str, line: str) -> None:
    started = time.monotonic()
    out = kolk(*command, "--sc", address, timeout_s=30)
    assert one_line(out, 1) == line
    assert time.monotonic() - started < ADDRESS_DEADLINE_S


def test_an_unresolvable_sc_host_is_one_line_at_once() -> None:
    """``.invalid`` never resolves (RFC 6761): not retried until the admin client's deadline."""
    started = time.monotonic()
    out = kolk("topic", "list", "--sc", "nosuchhost.invalid:9003", timeout_s=30)
    assert one_line(out, 1).startswith("kolk topic list: nosuchhost.invalid:9003: cannot resolve host "
                                       "'nosuchhost.invalid': ")
    assert time.monotonic() - started < ADDRESS_DEADLINE_S


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "[::1", "256.1.1.1:1"])
def test_the_admin_client_refuses_a_bad_address_before_connecting(address: str) -> None:
    from kolk.transport import InvalidAddressError

    with pytest.raises(InvalidAddressError) as e:
        AdminClient(address)
    assert str(e.value).startswith(f"invalid address {address!r}: ") and "\n" not in str(e.value)


# ---------------------------------------------------------------- files that are not files (issue 17, F4)

FILE_DEADLINE_S = 10.0  # reading a FIFO or /dev/zero would never end


def _special(kind: str, tmp_path: pathlib.Path) -> tuple[str, str]:
    """A path that is not a regular file, and what the CLI must call it."""
    if kind == "directory":
        return str(tmp_path), "is a directory, not a file"
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        return str(path), "is a FIFO, not a regular file"
    return "/dev/zero", "is a character device, not a regular file"


@pytest.mark.parametrize("kind", ["directory", "fifo", "/dev/zero"])
def test_policy_check_of_a_file_that_is_not_a_regular_file_says_what_it_is(kind: str,
                                                                          tmp_path: pathlib.Path) -> None:
    path, what = _special(kind, tmp_path)
    started = time.monotonic()
    assert one_line(kolk("policy", "check", path, timeout_s=30), 1) == f"{path}:1: {what}"
    assert time.monotonic() - started < FILE_DEADLINE_S


@pytest.mark.parametrize("kind", ["directory", "fifo", "/dev/zero"])
def test_cert_show_of_a_file_that_is_not_a_regular_file_says_what_it_is(kind: str, tmp_path: pathlib.Path) -> None:
    path, what = _special(kind, tmp_path)
    started = time.monotonic()
    assert one_line(kolk("cert", "show", path, timeout_s=30), 1) == f"kolk cert show: {path}: {what}"
    assert time.monotonic() - started < FILE_DEADLINE_S


def test_cert_show_of_a_file_too_large_is_one_line(tmp_path: pathlib.Path) -> None:
    from kolk.security.tls_files import TLS_FILE_BYTES_MAX

    path = tmp_path / "big.pem"
    path.write_bytes(b"A" * (TLS_FILE_BYTES_MAX + 1))
    assert one_line(kolk("cert", "show", str(path)), 1) == (f"kolk cert show: {path}: more than "
                                                            f"{TLS_FILE_BYTES_MAX:,} bytes, the largest certificate file")


@pytest.mark.parametrize("line", [1, 3])
def test_policy_check_of_an_integer_of_5000_digits_names_file_and_line(line: int, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "policy.toml"
    big = "9" * 5000
    path.write_text(f"version = {big}\n" if line == 1 else f"version = 2\n# a comment\nx = {big}\n")
    assert one_line(kolk("policy", "check", str(path)), 1) == (
        f"{path}:{line}: an integer of 5,000 digits: integers have at most 4,300 digits")
