"""``kolk cluster start|stop``: a local cluster as background processes (1 SC, N SPUs).

Data and logs live under ``$KOLK_HOME`` (default ``~/.kolk``): ``local/sc``, ``local/spu-N``,
``local/logs``. A profile file, ``$KOLK_HOME/profile.json``, records the SC address and the
process ids, so that later commands find the cluster (``kolk.client.profile`` reads it) and
``stop`` stops exactly the processes ``start`` started (by pid, never by name).

Ports stay the same across restarts, as Fluvio's local cluster keeps 9003: the first start
takes the SC at 9003 (its Raft port 9004) and SPU N at 9010+N when they are free, else ports
from the OS, and records them in ``local/ports.json``; later starts reuse them while free.
Every node serves metrics (``--metrics``, docs/metrics.md) on such a port too: the SC's at
9005, SPU N's at 9030+N; the profile's ``metrics`` names each node's bound address.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from ..client.profile import home_dir, private_dir, profile_path, read_profile, write_private, write_profile
from ..protocol.errors import KolkError

START_TIMEOUT_S = 30.0
SPUS_MAX = 16  # SPUs of a local cluster
STOP_TIMEOUT_S = 10.0


class ClusterAlreadyRunningError(KolkError):
    code = "alreadyRunning"


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs; an exited process not yet reaped (a zombie, ours or anyone's)
    counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours: reap it
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass  # not our child (the CLI that started it has exited)
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc: trust kill(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# console: the SC's web console; sc-metrics: the SC's /metrics and /health (docs/metrics.md)
PREFERRED_PORTS = {"sc": 9003, "raft": 9004, "console": 9080, "sc-metrics": 9005}
SPU_PORT_BASE = 9010
SC_METRICS = "sc-metrics"
SPU_METRICS_PORT_BASE = 9030  # SPU N's metrics at 9030+N
PORTS_FILE = "ports.json"


def _spu_metrics(i: int) -> str:
    """The ports.json name of SPU ``i``'s metrics port."""
    return f"spu-{i}-metrics"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stable_port(base: str, name: str) -> int:
    """The port ``name`` (sc, raft, console, sc-metrics, spu-N, spu-N-metrics) had last time
    if it is free, else its preferred port if free, else one from the OS; recorded for the
    next start."""
    path = os.path.join(base, PORTS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            ports = {k: int(v) for k, v in json.load(f).items()}
    except (OSError, ValueError, AttributeError):
        ports = {}
    taken = {p for k, p in ports.items() if k != name}
    spu, _, what = name.removeprefix("spu-").partition("-")  # "spu-N" or "spu-N-metrics"
    preferred = PREFERRED_PORTS.get(name) or (SPU_METRICS_PORT_BASE if what else SPU_PORT_BASE) + int(spu)
    for candidate in (ports.get(name), preferred):
        if candidate and candidate not in taken and _port_free(candidate):
            port = candidate
            break
    else:
        port = _free_port()
    ports[name] = port
    write_private(path, json.dumps(ports, indent=2))
    return port


def _spawn(args: list[str], log_path: str, env: dict[str, str]) -> int:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    return proc.pid


def _wait_ready(path: str, pid: int, what: str, log_path: str, deadline: float) -> dict[str, Any]:
    while time.monotonic() < deadline:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        if not process_alive(pid):
            raise KolkError(f"{what} exited during start; see {log_path}")
        time.sleep(0.01)  # polling a file with a deadline
    raise KolkError(f"{what} did not become ready within {START_TIMEOUT_S:.0f} s; see {log_path}")


def start(spus: int = 1, tls: bool = False, insecure_allow_plaintext_policy: bool = False,
          log_format: str = "text") -> dict[str, Any]:
    """Start 1 SC and ``spus`` SPUs; return the profile once every process serves.

    ``tls``: make a dev CA and certificates under the local directory (once; reused) and run
    every listener with mutual TLS; the profile names the admin client certificate the CLI
    then uses by itself. Every node gets the cluster secret file (mode 0600), which without
    TLS the SPUs prove to the SC and to each other. ``insecure_allow_plaintext_policy``: the
    SC stores a policy without TLS (audited; docs/security.md).

    A local cluster created with --tls keeps TLS when started again without it: its SC may
    hold a policy that needs TLS, and a plaintext start would have every call denied. The
    caller sees it in the profile (``tls``) and says so (docs/operations.md).

    ``log_format``: "text" or "json" for every node's log (``--log-format``); recorded in the
    profile, so SPUs started again into the running cluster use it too."""
    if not 1 <= spus <= SPUS_MAX:
        raise KolkError(f"--spus must be 1 to {SPUS_MAX}, got {spus}")
    profile = read_profile()
    if profile and profile.get("running"):
        pids = profile.get("pids", {})
        running = [pid for pid in pids.values() if process_alive(pid)]
        exited = sorted(name for name, pid in pids.items() if name.startswith("spu-") and not process_alive(pid))
        if running and exited and process_alive(pids.get("sc", -1)):
            # Some SPUs stopped (one whose data directory vanished exits with status 3): start
            # them again, on their data directories, into the running cluster.
            return _restart_spus(profile, exited)
        if running:
            raise ClusterAlreadyRunningError(
                f"a local cluster is already running (SC at {profile['sc']}, pids {sorted(running)}); "
                "run 'kolk cluster stop' first")
    if not tls and created_with_tls(profile):
        tls = True
    if log_format not in ("text", "json"):
        raise KolkError(f"--log-format must be text or json, got {log_format!r}")
    log_args = ["--log-format", log_format]
    # local/ and logs/ are 0700 whatever the umask (tightened if they exist more open), and so
    # is a $KOLK_HOME this creates (home_dir); the SC and SPUs make their data directories
    # private themselves.
    base = private_dir(os.path.join(home_dir(), "local"))
    logs = private_dir(os.path.join(base, "logs"))
    secret_file = os.path.join(base, "secret")
    if not os.path.exists(secret_file):
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    env = dict(os.environ)
    py = [sys.executable, "-m", "kolk"]
    pki: dict[str, dict[str, str]] = {}
    node_tls: list[str] = []
    if tls:
        from ..security.certs import dev_pki

        pki = dev_pki(os.path.join(base, "pki"), nodes=["kolk-node"], clients=["kolk-admin"])
        node = pki["kolk-node"]
        node_tls = ["--tls-ca", node["ca"], "--tls-cert", node["cert"], "--tls-key", node["key"]]
    deadline = time.monotonic() + START_TIMEOUT_S
    pids: dict[str, int] = {}
    sc_admin = f"127.0.0.1:{stable_port(base, 'sc')}"
    ready = os.path.join(base, "sc.ready")
    if os.path.exists(ready):
        os.unlink(ready)
    sc_log = os.path.join(logs, "sc.log")
    pids["sc"] = _spawn(py + ["sc", "--id", "1", "--data-dir", os.path.join(base, "sc"),
                              "--raft", f"127.0.0.1:{stable_port(base, 'raft')}", "--admin", sc_admin,
                              "--secret-file", secret_file, "--ready-file", ready, *node_tls, *log_args,
                              "--console", f"127.0.0.1:{stable_port(base, 'console')}",
                              "--metrics", f"127.0.0.1:{stable_port(base, SC_METRICS)}",
                              *(["--insecure-allow-plaintext-policy"] if insecure_allow_plaintext_policy else [])],
                             sc_log, env)
    try:
        # The SPUs start beside the SC, not after it: their interpreters and imports overlap the
        # SC's start, and each registers as soon as the SC answers (it retries until then).
        for i in range(1, spus + 1):
            pids[f"spu-{i}"] = _spawn_spu(i, sc_admin, base, node_tls + log_args, env)
        sc_ready = _wait_ready(ready, pids["sc"], "the SC", sc_log, deadline)
        metrics = {"sc": sc_ready.get("metrics")}
        for i in range(1, spus + 1):
            spu_ready = _wait_ready(os.path.join(base, f"spu-{i}.ready"), pids[f"spu-{i}"], f"SPU {i}",
                                    os.path.join(logs, f"spu-{i}.log"), deadline)
            metrics[f"spu-{i}"] = spu_ready.get("metrics")
    except BaseException:
        _stop_pids(pids)
        raise
    profile = {"running": True, "sc": sc_admin, "pids": pids, "data_dir": base, "logs": logs, "spus": spus,
               "log_format": log_format,
               # Every node's metrics listener, as "host:port" by node (kolk top, diagnostics, tests).
               "metrics": {node: address for node, address in metrics.items() if address}}
    if sc_ready.get("console"):  # the web console's URL (docs/console.md)
        profile["console"] = f"{'https' if tls else 'http'}://{sc_ready['console']}/"
    if tls:
        admin = pki["kolk-admin"]
        profile["tls"] = {"ca": admin["ca"], "cert": admin["cert"], "key": admin["key"]}
    write_profile(profile)
    return profile


def created_with_tls(profile: dict[str, Any] | None) -> bool:
    """Whether the local cluster of ``profile`` (the last start's, running or stopped) runs TLS."""
    return bool(profile and profile.get("tls"))


def _spawn_spu(i: int, sc_admin: str, base: str, node_tls: list[str], env: dict[str, str]) -> int:
    ready = os.path.join(base, f"spu-{i}.ready")
    if os.path.exists(ready):
        os.unlink(ready)
    return _spawn([sys.executable, "-m", "kolk", "spu", "--id", str(i), "--sc", sc_admin, "--data-dir",
                   os.path.join(base, f"spu-{i}"), "--public", f"127.0.0.1:{stable_port(base, f'spu-{i}')}",
                   "--ready-file", ready, "--secret-file", os.path.join(base, "secret"),
                   "--metrics", f"127.0.0.1:{stable_port(base, _spu_metrics(i))}",
                   *node_tls], os.path.join(base, "logs", f"spu-{i}.log"), env)


def _restart_spus(profile: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Start the exited SPUs ``names`` of the running cluster ``profile`` again."""
    base = profile["data_dir"]
    node_tls: list[str] = []
    if profile.get("tls"):
        from ..security.certs import dev_pki

        node = dev_pki(os.path.join(base, "pki"), nodes=["kolk-node"], clients=["kolk-admin"])["kolk-node"]
        node_tls = ["--tls-ca", node["ca"], "--tls-cert", node["cert"], "--tls-key", node["key"]]
    deadline = time.monotonic() + START_TIMEOUT_S
    pids = dict(profile["pids"])
    for name in names:
        log_args = ["--log-format", profile.get("log_format") or "text"]
        pids[name] = _spawn_spu(int(name.split("-", 1)[1]), profile["sc"], base, node_tls + log_args,
                                dict(os.environ))
    metrics = dict(profile.get("metrics") or {})
    for name in names:
        spu_ready = _wait_ready(os.path.join(base, f"{name}.ready"), pids[name], name.replace("spu-", "SPU "),
                                os.path.join(base, "logs", f"{name}.log"), deadline)
        if spu_ready.get("metrics"):
            metrics[name] = spu_ready["metrics"]
    profile = dict(profile, pids=pids, restarted=names, metrics=metrics)
    write_profile(profile)
    return profile


def _stop_pids(pids: dict[str, int]) -> list[str]:
    """SIGTERM every SPU and wait for them, then the SC: an SPU stopping hands its leaderships
    over through the SC (controlled shutdown, docs/operations.md), which it cannot do with the
    SC gone (it would wait for an SC that no longer answers before giving up)."""
    deadline = time.monotonic() + STOP_TIMEOUT_S
    killed: list[str] = []
    for group in ([n for n in pids if n != "sc"], [n for n in pids if n == "sc"]):
        for name in group:
            if process_alive(pids[name]):
                os.kill(pids[name], signal.SIGTERM)
        for name in group:
            while process_alive(pids[name]) and time.monotonic() < deadline:
                time.sleep(0.05)  # polling process exit with a deadline
            if process_alive(pids[name]):
                os.kill(pids[name], signal.SIGKILL)
                killed.append(name)
    return killed


def stop() -> dict[str, Any]:
    profile = read_profile()
    if not profile or not profile.get("running"):
        raise KolkError(f"no local cluster is running (no running profile in {profile_path()})")
    killed = _stop_pids(profile.get("pids", {}))
    profile["running"] = False
    write_profile(profile)
    return {"stopped": sorted(profile.get("pids", {})), "killed": killed}
