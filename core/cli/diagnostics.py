"""``kolk cluster diagnostics``: one archive with what a bug report needs (docs/operations.md
"Diagnostics").

Against any cluster the CLI can reach (the nodes may run on other hosts): it asks an SC for the
cluster status and every kind of metadata object, then every SC and every registered SPU for
``nodeDiagnostics`` (core/observe/node_diagnostics.py) in parallel, each within
:data:`NODE_TIMEOUT_S`. A node that does not answer gets a line in ``errors.txt`` and the
archive is written all the same; a refusal by the policy (no admin on cluster) ends the command
with that refusal and writes nothing. Everything passes the redaction of
core/observe/diagnostics.py once more before it is written (the nodes ran it already):
private key PEM blocks, values under sensitive names, the cluster secret when this CLI knows it
(``$KOLK_CLUSTER_SECRET``, or the local cluster's secret file) and the lines of its own TLS key.

The archive (core/cli/diagnostics_archive.py)::

    manifest.json                  what is inside, the CLI's versions, every error
    cluster-status.json            the SC's clusterStatus
    metadata/<kind>.json           every object of each kind (SmartModules without their wasm)
    nodes/<node>/info.json         versions, uptime, pid, effective settings, notes
    nodes/<node>/log.txt           its most recent log lines
    nodes/<node>/metrics.txt       its metrics, in the Prometheus text format
    errors.txt                     one line per node or object that could not be had (if any)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from ..client.admin import AdminClient
from ..metadata.objects import KINDS
from ..observe.diagnostics import Diagnostics, key_file_lines, redact_text, render_json, usable_secrets
from ..observe.node_diagnostics import dependency_versions
from ..protocol.channel import CallRejected, ConnectionLost
from ..protocol.errors import KolkError
from ..protocol.limits import DIAGNOSTICS_LOG_LINES_MAX
from ..protocol.wire import error_from_struct, transport_error
from ..security.tls import TlsConfig
from ..transport import SC, SPU, connect
from . import args as A
from .diagnostics_archive import Archive, checked_out_path, default_name

NODE_TIMEOUT_S = 20.0  # one node's answer, connection included (up to 8 MiB from another host)
CONNECT_TIMEOUT_S = 5.0
STATUS_TIMEOUT_S = 10.0  # the cluster status and each kind of metadata, retries included
NODES_IN_FLIGHT_MAX = 8  # nodes asked at once (each answer can be 8 MiB)
ERROR_CHARS_MAX = 500  # one error line of errors.txt
LOG_LINES = A.int_in(1, DIAGNOSTICS_LOG_LINES_MAX)
REDACTION = ("private key PEM blocks, values under names that say secret/password/token/key/credential "
             "(not *_file paths or sizes), the cluster secret when known, and the lines of TLS key files are "
             "replaced by <redacted>, by each node and again by the CLI")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=None, help="the archive to write (default: kolk-diagnostics-<UTC time>.tar.gz "
                                               "in the current directory); mode 0600")
    p.add_argument("--lines", type=LOG_LINES, default=DIAGNOSTICS_LOG_LINES_MAX,
                   help=f"the newest log lines to take from each node (default and most: "
                        f"{DIAGNOSTICS_LOG_LINES_MAX})")


@dataclass
class _Collected:
    errors: list[str] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    denied: str | None = None

    def error(self, line: str) -> None:
        self.errors.append(" ".join(line.split())[:ERROR_CHARS_MAX])


def known_secrets(tls: TlsConfig | None) -> tuple[str, ...]:
    """What this CLI knows must not be in the archive: the cluster secret ($KOLK_CLUSTER_SECRET,
    else the local cluster's secret file) and the base64 lines of its own TLS key."""
    from ..client.profile import read_profile
    from ..node.secret import SecretError, cluster_secret, read_secret_file

    found: list[str | None] = []
    try:
        found.append(cluster_secret(None))
    except SecretError:
        pass  # a secret too short to be one is not searched for
    profile = read_profile() or {}
    if isinstance(profile.get("data_dir"), str):
        try:
            found.append(read_secret_file(os.path.join(profile["data_dir"], "secret")))
        except SecretError:
            pass  # no local cluster secret here
    if tls is not None and tls.key:
        try:
            with open(tls.key, encoding="ascii", errors="replace") as f:
                found.extend(key_file_lines(f.read(64 << 10)))
        except OSError:
            pass  # the connection would fail and say why
    return usable_secrets(found)


def _without_wasm(obj: dict[str, Any]) -> dict[str, Any]:
    """A SmartModule object with its module's bytes replaced by their size and sha256."""
    spec = dict(obj.get("spec") or {})
    wasm = spec.pop("wasm", None)
    if isinstance(wasm, str):
        spec["wasm_omitted"] = {"base64_chars": len(wasm),
                                "sha256_of_base64": hashlib.sha256(wasm.encode()).hexdigest()}
    return dict(obj, spec=spec)


async def _metadata(admin: AdminClient, archive: Archive, secrets: tuple[str, ...], got: _Collected) -> None:
    for kind in KINDS:
        try:
            objs = await admin.list_objects(kind)
        except KolkError as e:  # a refusal here (policies) is noted: the nodes' refusal is the one that ends it
            got.error(f"metadata {kind}: {e}")
            got.metadata[kind] = {"error": str(e)}
            continue
        if kind == "smartmodule":
            objs = [_without_wasm(o) for o in objs]
        got.metadata[kind] = len(objs)
        await asyncio.to_thread(archive.add, f"metadata/{kind}.json", render_json(objs, secrets).encode())


async def _ask(service: Any, address: str, tls: TlsConfig | None, lines: int) -> Diagnostics:
    conn = await connect(service, address, tls, CONNECT_TIMEOUT_S)
    try:
        r = await conn.call("nodeDiagnostics", NODE_TIMEOUT_S, logLines=lines)
        if not r.result.ok:
            raise error_from_struct(r.result.error)
        return Diagnostics.from_json(r.diagnosticsJson)
    finally:
        conn.close()


async def _node(gate: asyncio.Semaphore, name: str, service: Any, address: str, note: str, tls: TlsConfig | None,
                lines: int, archive: Archive, secrets: tuple[str, ...], got: _Collected) -> None:
    """Ask one node; file its answer, or the reason there is none."""
    entry: dict[str, Any] = {"address": address, "ok": False}
    got.nodes[name] = entry
    try:
        async with gate, asyncio.timeout(NODE_TIMEOUT_S):
            d = await _ask(service, address, tls, lines)
    except TimeoutError:
        why = f"no answer within {NODE_TIMEOUT_S:g} s"
    except KolkError as e:
        if e.code == "denied":
            got.denied = got.denied or f"{name} at {address}: {e}"
        why = str(e)
    except (CallRejected, ConnectionLost) as e:
        why = str(transport_error(e, address))
    except ValueError as e:  # an answer that is not a diagnostics answer (or over its limit)
        why = f"its answer is not diagnostics: {e}"
    except OSError as e:
        why = f"{type(e).__name__}: {e}"
    else:
        answered = d.info.get("node")
        if answered != name:
            got.error(f"{name} at {address} answered as {answered!r}")
        info = dict(d.info, asked_at=address)
        for member, data in ((f"nodes/{name}/info.json", render_json(info, secrets)),
                             (f"nodes/{name}/log.txt", redact_text("\n".join(d.log_lines) + "\n", secrets)),
                             (f"nodes/{name}/metrics.txt", redact_text(d.metrics, secrets))):
            await asyncio.to_thread(archive.add, member, data.encode("utf-8", errors="replace"))
        entry.update(ok=True, log_lines=len(d.log_lines), notes=d.info.get("notes", []))
        return
    entry["error"] = why
    got.error(f"{name} at {address}: {note}{why}")


async def collect(addresses: str, tls: TlsConfig | None, lines: int, archive: Archive,
                  secrets: tuple[str, ...]) -> dict[str, Any]:
    """Fill ``archive``; the manifest (written last). KolkError when the cluster cannot be
    reached or the policy refuses (the caller throws the archive away)."""
    admin = AdminClient(addresses, tls=tls, timeout_s=STATUS_TIMEOUT_S)
    got = _Collected()
    try:
        status = await admin.cluster_status()
        await asyncio.to_thread(archive.add, "cluster-status.json", render_json(status, secrets).encode())
        await _metadata(admin, archive, secrets, got)
    finally:
        await admin.close()
    gate = asyncio.Semaphore(NODES_IN_FLIGHT_MAX)
    asks = [_node(gate, f"sc-{int(sc['id'])}", SC, sc["admin"], "", tls, lines, archive, secrets, got)
            for sc in status.get("scs", [])]
    down = "(the SC reports it down) "
    asks += [_node(gate, f"spu-{int(u['id'])}", SPU, u["public_address"], "" if u.get("alive") else down, tls, lines,
                   archive, secrets, got) for u in status.get("spus", [])]
    await asyncio.gather(*asks)
    if got.denied is not None:
        raise KolkError(f"refused: {got.denied}")
    if got.errors:
        await asyncio.to_thread(archive.add, "errors.txt", redact_text("\n".join(got.errors) + "\n", secrets).encode())
    manifest = {"format": 1, "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "sc": addresses, "log_lines_asked": lines, "redaction": REDACTION,
                "cli": {"versions": dependency_versions(), "python": sys.version.split()[0],
                        "platform": platform.platform()},
                "metadata": got.metadata, "nodes": dict(sorted(got.nodes.items())), "errors": got.errors,
                "members": [{"name": n, "bytes": b} for n, b in archive.members] + [{"name": "manifest.json"}]}
    await asyncio.to_thread(archive.add, "manifest.json", render_json(manifest, secrets).encode())
    return manifest


async def run(args: argparse.Namespace, addresses: str, tls: TlsConfig | None,
              show: Callable[[Any, str], None]) -> int:
    """The command: check --out, collect, write, print the path and a one-line summary."""
    path = checked_out_path(args.out if args.out is not None else default_name(datetime.now(timezone.utc)))
    secrets = known_secrets(tls)
    archive = Archive(path)
    try:
        manifest = await collect(addresses, tls, args.lines, archive, secrets)
        await asyncio.to_thread(archive.close)
    except BaseException:
        archive.abort()
        raise
    nodes = manifest["nodes"]
    answered = sum(1 for n in nodes.values() if n["ok"])
    topics = manifest["metadata"].get("topic")
    errors = len(manifest["errors"])
    show({"path": path, "manifest": manifest},
         f"{path}\n{answered} of {len(nodes)} nodes answered, "
         f"{topics if isinstance(topics, int) else '?'} topic(s), "
         + (f"{errors} error(s): see errors.txt in the archive" if errors else "no errors"))
    return 0
