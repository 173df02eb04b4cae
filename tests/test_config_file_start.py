"""``kolk sc`` and ``kolk spu`` started from config files, as real processes (issue 22, item 2).

A config error exits 2 with one line; an address that others cannot reach, a malformed one
and a bind address that cannot be bound stop the process at start with one line naming the
flag, before its data directory exists; and an SC (its --id on the command line, the rest
from its file) and an SPU started wholly from files, with TLS and the cluster secret named
in them, serve: a record is produced and consumed back. Every process is stopped by its own
pid; waits are conditions with deadlines. The parser itself: tests/test_config_file.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
from typing import Any, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jepsen.cluster import SECRET, free_port, wait_for  # noqa: E402

START_TIMEOUT_S = 60.0


def toml_value(value: Any) -> str:
    return json.dumps(value)  # strings, integers and arrays of strings are the same in TOML


def write(path: pathlib.Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def kolk(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kolk", *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_a_config_error_exits_2_with_one_line(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path / "spu.toml", "id = 1\nbogus = 2\n")
    done = kolk("spu", "--config", path)
    assert done.returncode == 2 and done.stdout == ""
    assert re.fullmatch(rf"kolk spu: {re.escape(path)}:2: unknown key 'bogus' \(known keys: id, .*\)\n", done.stderr)
    done = kolk("sc", "--config", path, "--config", path)
    assert (done.returncode, done.stderr) == (2, "kolk sc: --config given 2 times; a node reads one config file\n")


# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize("command, key, value, line", [
    ("spu", "public", "0.0.0.0:9010", "kolk spu: --public 0.0.0.0:9010: an advertised address must be one that "
     "others can reach; bind with --bind 0.0.0.0:9010 and advertise this host's name or address"),
    ("spu", "private", "[::]:9010", "kolk spu: --private [::]:9010: an advertised address must be one that others "
     "can reach; bind with --bind [::]:9010 and advertise this host's name or address"),
    ("spu", "public", ":9010", "kolk spu: --public: invalid address ':9010': no host before the port"),
    ("spu", "sc", "127.0.0.1:70000", "kolk spu: --sc: invalid address '127.0.0.1:70000': the port must be a "
     "number from 1 to 65535, not 70000"),
    ("spu", "bind", "no-such-host.invalid:9010", "kolk spu: --bind no-such-host.invalid:9010: cannot resolve "
     "'no-such-host.invalid' (Name or service not known); a bind address must name this host"),
    ("sc", "raft", "0.0.0.0:7000", "kolk sc: --raft 0.0.0.0:7000: an advertised address must be one that others "
     "can reach; bind with --bind-raft 0.0.0.0:7000 and advertise this host's name or address"),
    ("sc", "admin", "127.0.0.1", "kolk sc: --admin: invalid address '127.0.0.1': expected HOST:PORT, such as "
     "127.0.0.1:9003 (no port)"),
    ("sc", "peer", ["2=0.0.0.0:7001/h:9004"], "kolk sc: --peer 0.0.0.0:7001: an advertised address must be one "
     "that others can reach; give an address of the other node, as it advertises itself"),
], ids=["spu-public-unspecified", "spu-private-unspecified-v6", "spu-no-host", "spu-sc-port", "spu-bind-unresolved",
        "sc-raft-unspecified", "sc-admin-no-port", "sc-peer-unspecified"])
def test_a_bad_address_is_refused_at_start_naming_the_flag(tmp_path: pathlib.Path, command: str, key: str,
                                                          value: Any, line: str) -> None:
    data = tmp_path / "data"
    base = ({"id": 1, "data-dir": str(data), "raft": f"127.0.0.1:{free_port()}",
             "admin": f"127.0.0.1:{free_port()}"} if command == "sc" else
            {"id": 1, "data-dir": str(data), "sc": "127.0.0.1:9003", "public": f"127.0.0.1:{free_port()}"})
    base[key] = value
    path = write(tmp_path / f"{command}.toml", "".join(f"{k} = {toml_value(v)}\n" for k, v in base.items()))
    done = kolk(command, "--config", path, env={"KOLK_CLUSTER_SECRET": SECRET})
    assert (done.returncode, done.stderr) == (1, line + "\n")
    assert not data.exists()


def test_an_unbindable_bind_address_is_refused_naming_it(tmp_path: pathlib.Path) -> None:
    """192.0.2.1 (TEST-NET-1) is never this host's: the bind fails at start, before any data is written."""
    port = free_port()
    path = write(tmp_path / "sc.toml", f'id = 1\ndata-dir = "{tmp_path / "data"}"\nraft = "127.0.0.1:{free_port()}"\n'
                                       f'admin = "sc.example:{port}"\nbind-admin = "192.0.2.1:{port}"\n')
    done = kolk("sc", "--config", path, env={"KOLK_CLUSTER_SECRET": SECRET})
    assert (done.returncode, done.stderr) == (
        1, f"kolk sc: cannot listen for admin on 192.0.2.1:{port} (--bind-admin): cannot assign requested address\n")
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------- real processes from files


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Iterator[dict[str, Any]]:
    """One SC (--id on the command line, the rest from its file) and one SPU, wholly from its
    file, with TLS and the cluster secret named in the files."""
    from kolk.security.certs import dev_pki

    root = tmp_path_factory.mktemp("config")
    pki = dev_pki(str(root / "pki"), nodes=["node"], clients=["admin"])
    node = pki["node"]
    tls = f'tls-ca = "{node["ca"]}"\ntls-cert = "{node["cert"]}"\ntls-key = "{node["key"]}"\n'
    secret = root / "secret"
    write(secret, SECRET)
    admin = f"127.0.0.1:{free_port()}"
    sc_file = write(root / "sc.toml", f'data-dir = "{root / "sc"}"\nraft = "127.0.0.1:{free_port()}"\n'
                                      f'admin = "{admin}"\nsecret-file = "{secret}"\n'
                                      f'ready-file = "{root / "sc.ready"}"\n{tls}', 0o644)
    spu_file = write(root / "spu.toml", f'id = 1\ndata-dir = "{root / "spu"}"\nsc = "{admin}"\n'
                                        f'public = "127.0.0.1:{free_port()}"\nrack = "rack-a"\n'
                                        f'ready-file = "{root / "spu.ready"}"\n{tls}')
    procs: list[subprocess.Popen] = []
    logs = [open(root / "sc.log", "w"), open(root / "spu.log", "w")]
    try:
        procs.append(subprocess.Popen([sys.executable, "-m", "kolk", "sc", "--id", "1", "--config", sc_file],
                                      stdout=logs[0], stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen([sys.executable, "-m", "kolk", "spu", "--config", spu_file],
                                      stdout=logs[1], stderr=subprocess.STDOUT))
        for name, proc in zip(("sc", "spu"), procs):
            wait_for(lambda name=name, proc=proc: (root / f"{name}.ready").exists() or proc.poll() is not None,
                     START_TIMEOUT_S, f"the {name} to serve")
            assert proc.poll() is None, f"{name} stopped:\n" + (root / f"{name}.log").read_text()[-3000:]
        yield {"admin": admin, "pki": pki, "root": root}
    finally:
        for proc in reversed(procs):
            stop(proc)
        for f in logs:
            f.close()


def test_an_sc_and_an_spu_started_from_config_files_serve(cluster: dict[str, Any]) -> None:
    """Produce one record and consume it back through a cluster started from files."""
    from dataplane_cluster import read_all
    from kolk.client.client import AsyncClient
    from kolk.security.tls import TlsConfig

    admin = cluster["pki"]["admin"]

    async def produce_and_consume() -> list[bytes]:
        async with AsyncClient([cluster["admin"]], timeout_s=30,
                               tls=TlsConfig(admin["ca"], admin["cert"], admin["key"])) as client:
            await client.create_topic("from-files", 1, 1)
            producer = client.producer("from-files", acks="all")
            sent = await producer.send(b"hello from a config file")
            await producer.flush()
            assert (await sent).offset == 0
            return [r.value for r in await read_all(client, "from-files")]

    assert asyncio.run(produce_and_consume()) == [b"hello from a config file"]

