"""Where the deployment artifacts are and how to read them, for tests/test_deploy_*.py
(docs/deploy.md): the documented ports, the Kubernetes manifests, the flag parsers of
``kolk sc``/``kolk spu`` and the node's own config-file reader."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from kolk.node.config_file import file_argv as _node_file_argv

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
CONTAINERFILE = DEPLOY / "container" / "Containerfile"
PROBE = DEPLOY / "container" / "kolk-probe"
DOCS = ROOT / "docs" / "deploy.md"
KOLK_BIN = Path(sys.executable).parent  # the venv's bin: kolk, python
# The Kubernetes version the manifests are checked against: the oldest release they need
# (persistentVolumeClaimRetentionPolicy, StatefulSet minReadySeconds, policy/v1).
K8S_VERSION = "1.30.0"
NON_ROOT_UID = 10001
SUBPROCESS_S = 120


def documented_ports() -> dict[str, int]:
    """The ports table of docs/deploy.md: {"SC admin": 9003, ...}."""
    ports = {}
    for line in DOCS.read_text().splitlines():
        m = re.match(r"\|\s*(SC|SPU)\s*\|\s*([^|]+?)\s*\|\s*`?(\d+)`?\s*\|", line)
        if m:
            ports[f"{m.group(1)} {m.group(2)}"] = int(m.group(3))
    return ports


def manifests() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            docs.append((path.name, doc))
    return docs


def of_kind(kind: str) -> list[dict]:
    return [d for _, d in manifests() if d["kind"] == kind]


def statefulset(name: str) -> dict:
    [s] = [d for d in of_kind("StatefulSet") if d["metadata"]["name"] == name]
    return s


def parser(role: str) -> argparse.ArgumentParser:
    if role == "sc":
        from kolk.sc.main import add_arguments
    else:
        from kolk.spu.main import add_arguments
    p = argparse.ArgumentParser(prog=f"kolk {role}", exit_on_error=False)
    add_arguments(p)
    return p


def file_argv(text: str, role: str, path: str = "config.toml", given: frozenset[str] = frozenset()) -> list[str]:
    """The flags a config file for ``kolk ROLE`` stands for, checked by the node's own reader
    (core/node/config_file.py): ConfigFileError naming the line for an unknown key or a value
    of the wrong type."""
    return _node_file_argv(text, path, parser(role), given)


def config_map_file(name: str, key: str) -> str:
    [cm] = [d for d in of_kind("ConfigMap") if d["metadata"]["name"] == name]
    return cm["data"][key]
