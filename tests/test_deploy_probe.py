"""TLS for the manifests and kolk-probe (docs/deploy.md, "TLS" and "Probes"): the
certificates deploy/k8s/make-certs.sh issues, served by a real metrics listener and verified
by the stable names; kolk-probe against that listener, and every kind of bad input to it."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from kolk.observe.metrics_server import start_metrics_listener
from kolk.security.tls import TlsConfig

from deploy_files import K8S, KOLK_BIN, PROBE, SUBPROCESS_S


class _Loop:
    """An asyncio loop on a thread of its own, for listeners the probe (a subprocess) dials."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro, timeout_s: float = 30.0):  # noqa: ANN001, ANN201
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# ---------------------------------------------------------------- TLS and the probe

@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """The certificates deploy/k8s/make-certs.sh issues (run for real, with the venv's kolk)."""
    out = tmp_path_factory.mktemp("pki") / "pki"
    env = {**os.environ, "PATH": f"{KOLK_BIN}:{os.environ['PATH']}"}
    done = subprocess.run([str(K8S / "make-certs.sh"), str(out)], env=env, capture_output=True, text=True,
                          timeout=SUBPROCESS_S)
    assert done.returncode == 0, done.stderr
    assert "kubectl -n kolk create secret generic kolk-sc-tls" in done.stdout
    return out


class _Health:
    def __init__(self) -> None:
        self.answer = (True, "ok")

    def __call__(self) -> tuple[bool, str]:
        return self.answer


@pytest.fixture(scope="module")
def node(pki):
    """A real metrics listener with the SC's certificate, as kolk-sc-N serves it (TLS on)."""
    from prometheus_client import CollectorRegistry

    loop = _Loop()
    health = _Health()
    tls = TlsConfig(str(pki / "ca.crt"), str(pki / "kolk-sc.crt"), str(pki / "kolk-sc.key"))
    listener = loop.run(start_metrics_listener("127.0.0.1:0", CollectorRegistry(), tls, health, "test-sc"))
    try:
        yield listener.address, health
    finally:
        loop.run(listener.close())
        loop.close()


def _probe(*args: str, pki: Path | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"]}
    if pki is not None:
        env.update(KOLK_TLS_CA=str(pki / "ca.crt"), KOLK_TLS_CERT=str(pki / "kolk-sc.crt"),
                   KOLK_TLS_KEY=str(pki / "kolk-sc.key"))
    return subprocess.run([sys.executable, str(PROBE), *args], env=env, capture_output=True, text=True,
                          timeout=SUBPROCESS_S)


def test_certificates_name_the_stable_names_and_refuse_others(pki, node):
    address, _ = node
    host, port = address.rsplit(":", 1)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki / "ca.crt")
    ctx.load_cert_chain(pki / "admin.crt", pki / "admin.key")
    def handshake(name: str) -> None:
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname=name):
                pass

    for name in ("kolk-sc-0.kolk-sc.kolk.svc.cluster.local", "kolk-sc-2.kolk-sc.kolk.svc.cluster.local",
                 "kolk.kolk.svc.cluster.local", "127.0.0.1"):
        handshake(name)  # the SC's certificate is valid for each name it is reached by
    for wrong in ("kolk-spu-0.kolk-spu.kolk.svc.cluster.local", "kolk-sc-0.kolk-sc.other.svc.cluster.local"):
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            handshake(wrong)


def test_probe_readiness_follows_health_and_liveness_only_needs_an_answer(pki, node):
    address, health = node
    done = _probe(address, pki=pki)
    assert done.returncode == 0 and "/health answered 200 ok" in done.stdout, done.stderr
    health.answer = (False, "SC 1 is not connected to a majority of the SCs")
    try:
        done = _probe(address, pki=pki)
        assert done.returncode == 1
        assert done.stderr.strip() == ("kolk-probe: /health answered 503 SC 1 is not connected to a majority "
                                       "of the SCs")
        live = _probe("--live", address, pki=pki)  # cut off is not dead: not restarted
        assert live.returncode == 0 and "alive: /health answered 503" in live.stdout, live.stderr
    finally:
        health.answer = (True, "ok")


def test_probe_fails_liveness_when_nothing_answers():
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
        done = _probe("--live", "--timeout-s", "2", address)
    assert done.returncode == 1 and f"{address}/health did not answer" in done.stderr, done.stderr


def test_probe_without_a_client_certificate_is_refused_by_a_tls_node(node):
    address, _ = node
    done = _probe("--live", address)  # plaintext to a TLS listener
    assert done.returncode == 1 and "did not answer" in done.stderr


@pytest.mark.parametrize("args, env, message", [
    (["nohost"], {}, "address 'nohost' is not HOST:PORT with a port from 1 to 65535"),
    (["127.0.0.1:0"], {}, "address '127.0.0.1:0' is not HOST:PORT with a port from 1 to 65535"),
    (["--timeout-s", "0", "127.0.0.1:1"], {}, "--timeout-s must be more than 0 and at most 60, not 0"),
    (["--timeout-s", "61", "127.0.0.1:1"], {}, "--timeout-s must be more than 0 and at most 60, not 61"),
    (["127.0.0.1:1"], {"KOLK_TLS_CERT": "/x.crt"}, "a client certificate or key was given without a CA"),
    (["127.0.0.1:1"], {"KOLK_TLS_CA": "/x.crt"}, "TLS needs a client certificate and key as well as the CA"),
    (["127.0.0.1:1"], {"KOLK_TLS_CA": "/no/ca.crt", "KOLK_TLS_CERT": "/no/c", "KOLK_TLS_KEY": "/no/k"},
     "cannot load the TLS files (/no/ca.crt, /no/c, /no/k)"),
])
def test_probe_refuses_bad_input_with_one_line(args, env, message):
    done = subprocess.run([sys.executable, str(PROBE), *args], env={"PATH": os.environ["PATH"], **env},
                          capture_output=True, text=True, timeout=SUBPROCESS_S)
    assert done.returncode == 2
    assert done.stderr.startswith(f"kolk-probe: {message}") and len(done.stderr.splitlines()) == 1, done.stderr


def test_probe_is_an_executable_script_of_the_standard_library_only():
    assert os.access(PROBE, os.X_OK)
    imports = re.findall(r"^(?:import|from) (\w+)", PROBE.read_text(), re.M)
    assert set(imports) <= {"__future__", "argparse", "http", "os", "ssl", "sys"}, imports
    assert shlex.split(PROBE.read_text().splitlines()[0][2:]) == ["/usr/bin/env", "python3"]
