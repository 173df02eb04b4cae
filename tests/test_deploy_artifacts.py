"""The deployment artifacts in deploy/ (docs/deploy.md), checked offline: no cluster, no image.

* The ports table of docs/deploy.md, which the image and the manifests must match.
* systemd units: ``systemd-analyze verify`` in a root of their own, warnings refused; the
  example config files read by the node's own reader.
* The container recipe: its stages, user, ports and health check; its builder step (``pip
  wheel . --no-deps`` on exactly what the builder copies) run for real.

The Kubernetes manifests are tests/test_deploy_k8s.py; TLS and kolk-probe tests/test_deploy_probe.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from kolk.node.config_file import ConfigFileError

from deploy_files import CONTAINERFILE, DEPLOY, NON_ROOT_UID, ROOT, SUBPROCESS_S, documented_ports, file_argv, parser


# ---------------------------------------------------------------- the documented ports

def test_docs_list_every_listener_once():
    ports = documented_ports()
    assert set(ports) == {"SC admin", "SC raft", "SC metrics", "SC console", "SPU data", "SPU metrics"}, ports
    assert len(set(ports.values())) == len(ports), "two listeners share a default port"


# ---------------------------------------------------------------- systemd

def _systemd_root(tmp: Path, units: dict[str, str], with_kolk: bool = True) -> Path:
    """A file-system root for ``systemd-analyze verify --root``: the system's own units (the
    targets ours refer to), ours, and a stand-in /usr/local/bin/kolk."""
    root = tmp / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
    if with_kolk:
        (root / "usr/local/bin").mkdir(parents=True)
        (root / "usr/local/bin/kolk").write_text("#!/bin/sh\n")
        (root / "usr/local/bin/kolk").chmod(0o755)
    return root


def _verify(root: Path, *units: str) -> tuple[int, str]:
    out = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", *units],
                         capture_output=True, text=True, timeout=SUBPROCESS_S)
    return out.returncode, out.stdout + out.stderr


def _our_units() -> dict[str, str]:
    return {p.name: p.read_text() for p in (DEPLOY / "systemd").glob("*.service")}


def test_systemd_units_verify_cleanly(tmp_path):
    units = _our_units()
    assert set(units) == {"kolk-sc.service", "kolk-spu@.service"}
    code, out = _verify(_systemd_root(tmp_path, units), "kolk-sc.service", "kolk-spu@1.service")
    ours = [line for line in out.splitlines() if "kolk" in line]
    assert code == 0 and not ours, out


def test_systemd_verify_refuses_a_misspelt_key(tmp_path):
    """Proves the check above is strict: a typo is reported, not silently ignored."""
    units = _our_units()
    units["kolk-sc.service"] = units["kolk-sc.service"].replace("NoNewPrivileges=", "NoNewPrivilege=")
    _, out = _verify(_systemd_root(tmp_path, units), "kolk-sc.service")
    assert "Unknown key 'NoNewPrivilege'" in out, out


def test_systemd_verify_refuses_a_missing_binary(tmp_path):
    _, out = _verify(_systemd_root(tmp_path, _our_units(), with_kolk=False), "kolk-sc.service")
    assert "/usr/local/bin/kolk is not executable" in out, out


def test_systemd_units_run_hardened_with_their_config():
    for name, text in _our_units().items():
        keys = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
        role = "spu" if name.startswith("kolk-spu") else "sc"
        assert keys["ExecStart"].startswith(f"/usr/local/bin/kolk {role} --config /etc/kolk/"), name
        assert keys["User"] == "kolk" and keys["Restart"] == "on-failure", name
        assert keys["NoNewPrivileges"] == "yes" and keys["ProtectSystem"] == "strict", name
        assert keys["ReadWritePaths"] == "/var/lib/kolk" and keys["PrivateTmp"] == "yes", name
        assert int(keys["LimitNOFILE"]) >= 65536 and int(keys["TimeoutStopSec"]) >= 30, name


def test_systemd_config_files_hold_only_flags():
    for role in ("sc", "spu"):
        text = (DEPLOY / "config" / f"{role}.toml").read_text()
        args = parser(role).parse_args(file_argv(text, role))  # known keys, values of the right type
        assert args.data_dir.startswith("/var/lib/kolk/"), "ReadWritePaths of the unit"


def test_config_check_refuses_a_misspelt_key():
    """Proves the config checks here are strict: a misspelt key is refused, naming its line."""
    with pytest.raises(ConfigFileError, match=r"^sc.toml:2: unknown key 'data-dirr' \(did you mean 'data-dir'\?"):
        file_argv('id = 1\ndata-dirr = "/x"\n', "sc", "sc.toml")


# ---------------------------------------------------------------- the container recipe

def _instructions() -> list[tuple[str, str]]:
    text = CONTAINERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for word, rest in _instructions():
        if word == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((word, rest))
    return stages


def test_containerfile_builds_in_two_stages_and_runs_as_a_fixed_non_root_user():
    stages = _stages()
    assert len(stages) >= 2
    assert stages[0][0][1].endswith("AS builder")
    final = stages[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:\d+)?", users[-1]), users
    assert int(users[-1].split(":")[0]) == NON_ROOT_UID
    runtime = " ".join(rest for _, rest in final)
    for dev in ("build-essential", "gcc", "[dev]", "pytest", "hypothesis", "selenium"):
        assert dev not in runtime, f"{dev} in the runtime stage"
    assert "--no-index" in runtime, "the runtime installs only the builder's wheels"
    [entry] = [rest for word, rest in final if word == "ENTRYPOINT"]
    assert json.loads(entry)[:2] == ["/usr/bin/tini", "--"]
    [check] = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert "kolk-probe" in check
    assert any(word == "VOLUME" and "/var/lib/kolk" in rest for word, rest in final)


def test_containerfile_exposes_every_documented_port():
    exposed = {int(p) for word, rest in _instructions() if word == "EXPOSE" for p in rest.split()}
    assert exposed == set(documented_ports().values())


def test_containerfile_copies_only_what_exists_and_the_ignore_file_lets_in():
    allowed = {line[1:] for line in (DEPLOY / "container" / "Containerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    for word, rest in _instructions():
        if word != "COPY" or "--from=" in rest:
            continue
        sources = [s for s in rest.split()[:-1] if not s.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source in allowed, f"{source} is kept out of the build context"


def test_builder_step_makes_a_complete_wheel_without_dev_extras(tmp_path):
    """The builder stage's `pip wheel . --no-deps`, on a copy of exactly what it copies."""
    context = tmp_path / "src"
    context.mkdir()
    for word, rest in _stages()[0]:
        if word == "COPY":
            for source in rest.split()[:-1]:
                src = ROOT / source
                if src.is_dir():
                    shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(src, context / source)
    wheels = tmp_path / "wheels"
    # --no-build-isolation: the venv's setuptools (>= 77, as pyproject.toml requires) instead of
    # a fresh copy from PyPI for this one build: the same backend, without ~10 s of download.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-cache-dir", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", str(wheels), "."], cwd=context, check=True, timeout=300)
    [wheel] = wheels.glob("kolk-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        [meta] = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = z.read(meta).decode()
    # Every module of every installed folder is in the wheel (a package missing from
    # pyproject.toml's list would be missing from the image).
    folders = {"core": "kolk", "raft": "kolk/raft", "metadata": "kolk/metadata", "segments": "kolk/segments",
               "security": "kolk/security", "smartmodule": "kolk/smartmodule"}
    for folder, package in folders.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder)
            if "__pycache__" in rel.parts or (folder == "core" and rel.parts[0] in folders.values()):
                continue
            assert f"{package}/{rel.as_posix()}" in names, f"{folder}/{rel} is not in the wheel"
    assert "kolk/protocol/kolk.capnp" in names
    runtime_requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")
                        and "extra ==" not in line]
    for dev in ("pytest", "hypothesis", "selenium", "kubernetes-validate"):
        assert not any(dev in line for line in runtime_requires), dev
