"""The Kubernetes manifests in deploy/k8s/ (docs/deploy.md, "Kubernetes"), checked offline:
every document against the pinned Kubernetes schemas, strictly (unknown fields refused), and
our own rules: probes, PDBs, config keys, resources, users, stable names; the pods' start
commands run with a stand-in ``kolk`` and parsed as ``kolk`` parses them."""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kolk.node.config_file import with_config_file
from kolk.node.addresses import check_sc_addresses, check_spu_addresses

from deploy_files import (K8S, K8S_VERSION, NON_ROOT_UID, SUBPROCESS_S, config_map_file, documented_ports, file_argv,
                          manifests, of_kind, parser, statefulset)


def _run_start_command(sts: dict, tmp: Path, pod: str, extra_env: dict[str, str] | None = None) -> list[str]:
    """Run a StatefulSet's start command as pod ``pod`` would, with a stand-in ``kolk`` that
    prints the arguments it was given; those arguments."""
    container = sts["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[:2] == ["/usr/bin/tini", "--"], "tini must be PID 1 (signals, zombies)"
    stub_dir = tmp / f"bin-{pod}"
    stub_dir.mkdir()
    stub = stub_dir / "kolk"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    stub.chmod(0o755)
    env = {"PATH": f"{stub_dir}:/usr/bin:/bin", "HOSTNAME": pod, "POD_NAMESPACE": "kolk"}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
    env.update(extra_env or {})
    out = subprocess.run(command[2:] + container["args"], env=env, capture_output=True, text=True,
                         timeout=SUBPROCESS_S, check=True)
    return json.loads(out.stdout)


def _parse_as_the_pod(tmp: Path, role: str, config_map: str, argv: list[str]) -> argparse.Namespace:
    """What ``kolk ROLE`` makes of the pod's argv: its --config file (the ConfigMap's, written
    where the pod mounts it here under ``tmp``) expanded first, then parsed by its parser."""
    config = tmp / f"{role}.toml"
    config.write_text(config_map_file(config_map, f"{role}.toml"))
    rest = argv[1:]
    rest[rest.index("--config") + 1] = str(config)
    flags = parser(role)
    expanded = with_config_file(rest, flags)
    assert expanded != rest, "the config file was read"
    i = expanded.index("--config")
    return flags.parse_args(expanded[:i] + expanded[i + 2:])


# ---------------------------------------------------------------- Kubernetes: the schemas

def test_every_manifest_is_valid_for_the_pinned_kubernetes_strictly():
    documents = manifests()
    assert {d["kind"] for _, d in documents} == {"Namespace", "ConfigMap", "Service", "StatefulSet",
                                                 "PodDisruptionBudget"}
    for _, doc in documents:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises naming the field


def test_the_validator_refuses_a_misspelt_field():
    """Proves the check above is strict: a typo'd field is an error, not ignored."""
    sts = copy.deepcopy(statefulset("kolk-sc"))
    container = sts["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbes"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="'readinessProbes' was unexpected"):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_the_validator_refuses_a_wrong_type():
    sts = copy.deepcopy(statefulset("kolk-spu"))
    sts["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError, match="'three' is not of type 'integer'"):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_and_nothing_else():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


# ---------------------------------------------------------------- Kubernetes: our own rules

def test_every_container_is_probed_on_health_bounded_and_not_root():
    for sts in of_kind("StatefulSet"):
        pod = sts["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == NON_ROOT_UID
        assert pod["securityContext"]["fsGroup"] == NON_ROOT_UID, "the data volume must be writable"
        assert pod["terminationGracePeriodSeconds"] >= 30
        for c in pod["containers"]:
            who = f"{sts['metadata']['name']}/{c['name']}"
            assert c["readinessProbe"]["exec"]["command"] == ["kolk-probe"], who
            for probe in ("livenessProbe", "startupProbe"):
                assert c[probe]["exec"]["command"] == ["kolk-probe", "--live"], f"{who} {probe}"
            assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"], who
            assert c["resources"]["limits"]["memory"], who
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] and not sc["allowPrivilegeEscalation"] and sc["readOnlyRootFilesystem"], who
            assert sc["capabilities"]["drop"] == ["ALL"], who
            mounts = {m["mountPath"] for m in c["volumeMounts"]}
            assert {"/var/lib/kolk", "/tmp", "/etc/kolk/tls"} <= mounts, who


def test_probes_dial_the_metrics_port_of_their_own_container():
    for sts in of_kind("StatefulSet"):
        c = sts["spec"]["template"]["spec"]["containers"][0]
        env = {v["name"]: v.get("value") for v in c["env"]}
        probe_port = int(env["KOLK_PROBE_ADDRESS"].rsplit(":", 1)[1])
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert probe_port == ports["metrics"]
        role = c["name"]
        config = tomllib.loads(config_map_file(f"kolk-{role}-config", f"{role}.toml"))
        assert config["metrics"] == f"0.0.0.0:{probe_port}"


def test_container_ports_are_the_documented_ones():
    documented = documented_ports()
    for sts in of_kind("StatefulSet"):
        c = sts["spec"]["template"]["spec"]["containers"][0]
        role = c["name"].upper()
        mine = {f"{role} {p['name']}": p["containerPort"] for p in c["ports"]}
        assert mine == {k: v for k, v in documented.items() if k.startswith(role + " ")}


def test_pdbs_select_the_statefulsets_and_allow_one_down():
    sets = {s["metadata"]["name"]: s for s in of_kind("StatefulSet")}
    pdbs = {p["metadata"]["name"]: p for p in of_kind("PodDisruptionBudget")}
    assert set(pdbs) == set(sets)
    for name, pdb in pdbs.items():
        assert pdb["spec"]["maxUnavailable"] == 1
        labels = sets[name]["spec"]["template"]["metadata"]["labels"]
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), name
        # ... and only that set: the other's pods do not match.
        for other, s in sets.items():
            if other != name:
                assert not selector.items() <= s["spec"]["template"]["metadata"]["labels"].items()


def test_statefulsets_have_stable_names_volumes_and_rolling_updates():
    services = {s["metadata"]["name"]: s for s in of_kind("Service")}
    for sts in of_kind("StatefulSet"):
        spec = sts["spec"]
        headless = services[spec["serviceName"]]["spec"]
        assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
        assert headless["selector"].items() <= spec["template"]["metadata"]["labels"].items()
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        assert spec["podManagementPolicy"] == "Parallel"
        assert spec["updateStrategy"]["type"] == "RollingUpdate"
        [claim] = spec["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
    assert statefulset("kolk-sc")["spec"]["replicas"] == 3
    client = services["kolk"]["spec"]
    assert "clusterIP" not in client and client["selector"] == services["kolk-sc"]["spec"]["selector"]


def test_config_maps_hold_only_known_flags():
    for role in ("sc", "spu"):
        text = config_map_file(f"kolk-{role}-config", f"{role}.toml")
        file_argv(text, role)  # ConfigFileError naming the line if a key is no flag or a value is wrong
        config = tomllib.loads(text)
        assert config["data-dir"].startswith("/var/lib/kolk/"), "below the volume, never its mount point"
        for key in ("tls-ca", "tls-cert", "tls-key"):
            assert config[key].startswith("/etc/kolk/tls/")


@pytest.mark.parametrize("ordinal", [0, 1, 2])
def test_sc_start_command_gives_each_pod_its_id_names_and_peers(tmp_path, ordinal):
    sts = statefulset("kolk-sc")
    argv = _run_start_command(sts, tmp_path, f"kolk-sc-{ordinal}")
    assert argv[:3] == ["sc", "--config", "/etc/kolk/config/sc.toml"]
    args = _parse_as_the_pod(tmp_path, "sc", "kolk-sc-config", argv)
    domain = "kolk-sc.kolk.svc.cluster.local"
    assert args.id == ordinal + 1
    assert args.raft == f"kolk-sc-{ordinal}.{domain}:9004" and args.admin == f"kolk-sc-{ordinal}.{domain}:9003"
    assert sorted(args.peer) == [f"{i + 1}=kolk-sc-{i}.{domain}:9004/kolk-sc-{i}.{domain}:9003"
                                 for i in range(3) if i != ordinal]
    # The checks `kolk sc` makes at start: names advertised, every interface bound.
    check_sc_addresses(args.raft, args.admin, args.bind_raft, args.bind_admin,
                       [tuple(p.split("=", 1)[1].split("/")) for p in args.peer])


def test_spu_start_command_gives_each_pod_its_id_address_and_rack(tmp_path):
    sts = statefulset("kolk-spu")
    argv = _run_start_command(sts, tmp_path, "kolk-spu-4", {"KOLK_RACK": "zone-b"})
    args = _parse_as_the_pod(tmp_path, "spu", "kolk-spu-config", argv)
    assert argv[:3] == ["spu", "--config", "/etc/kolk/config/spu.toml"]
    assert args.id == 5 and args.rack == "zone-b"
    assert args.public == "kolk-spu-4.kolk-spu.kolk.svc.cluster.local:9010" and args.private is None
    assert args.sc.split(",") == [f"kolk-sc-{i}.kolk-sc.kolk.svc.cluster.local:9003" for i in range(3)]
    check_spu_addresses(args.public, args.private, args.bind, args.sc.split(","))
    # Without a zone label the SPU gets no --rack (not an empty one).
    argv = _run_start_command(sts, tmp_path, "kolk-spu-0", {"KOLK_RACK": ""})
    assert "--rack" not in argv and argv[argv.index("--id") + 1] == "1"
