"""The node's side of ``nodeDiagnostics`` (docs/operations.md "Diagnostics"): gathers what
core/observe/diagnostics.py builds the answer from. The SC (core/sc/api.py) and the SPU
(core/spu/replication_api.py) check the caller may admin the cluster, then await
:func:`node_diagnostics`.

The recent log lines are copied on the loop (a copy of a bounded ring); everything else
(rendering the metrics, reading the key file for its lines, redacting up to 8 MiB, writing the
JSON) runs in a worker thread, so a large answer never holds the node's loop. At most
:data:`DIAGNOSTICS_IN_FLIGHT_MAX` answers are built at once per process; more are refused
(retriable), so a loop of callers cannot pile up copies of the answer in memory.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import time
from importlib import metadata
from typing import Any

from ..protocol.limits import DIAGNOSTICS_BYTES_MAX, DIAGNOSTICS_LOG_LINES_MAX
from ..protocol.wire import set_error
from .diagnostics import NodeFacts, build_answer, key_file_lines, settings_of, usable_secrets
from .logs import recent_log_lines

# The distributions a bug report needs the versions of (kolk's own and what it stands on).
DEPENDENCIES = ("kolk", "pysyncobj", "rocksdict", "wasmtime", "pycapnp", "cryptography", "prometheus_client")
DIAGNOSTICS_IN_FLIGHT_MAX = 2
KEY_FILE_BYTES_MAX = 64 << 10  # a PEM private key is a few KiB; a larger "key" is not read
_in_flight = 0


class DiagnosticsBusy(Exception):
    """Already building DIAGNOSTICS_IN_FLIGHT_MAX answers; the caller may ask again shortly."""


def dependency_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in DEPENDENCIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def process_started_s() -> float | None:
    """When this process started (seconds since the epoch), from /proc; None elsewhere."""
    try:
        with open("/proc/self/stat", encoding="ascii", errors="replace") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii", errors="replace") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _key_lines(key_file: str | None, notes: list[str]) -> list[str]:
    """The base64 lines of the node's own TLS key, searched for as secrets in what it answers."""
    if not key_file:
        return []
    try:
        with open(key_file, "rb") as f:
            data = f.read(KEY_FILE_BYTES_MAX)
    except OSError as e:
        notes.append(f"the TLS key file could not be read to redact its lines: {e.strerror or e}")
        return []
    return key_file_lines(data.decode("ascii", errors="replace"))


def _render_metrics(registry: Any, notes: list[str]) -> str:
    if registry is None:
        notes.append("this node has no metrics registry")
        return ""
    from prometheus_client import generate_latest

    try:
        return generate_latest(registry).decode("utf-8", errors="replace")
    except Exception as e:  # noqa: BLE001 - a failing collector must not cost the rest of the report
        notes.append(f"rendering the metrics failed: {type(e).__name__}: {str(e)[:200]}")
        return ""


def _assemble(node: str, config: Any, registry: Any, secrets: list[str | None], key_file: str | None,
              lines: list[str], notes: list[str], lines_max: int) -> str:
    metrics = _render_metrics(registry, notes)
    found = usable_secrets([*secrets, *_key_lines(key_file, notes)])
    facts = NodeFacts(node, os.getpid(), sys.version.split()[0], platform.platform(), dependency_versions(),
                      process_started_s())
    return build_answer(facts, time.time(), settings_of(config), lines, metrics, notes, found, DIAGNOSTICS_BYTES_MAX,
                        lines_max).to_json()


async def node_diagnostics(node: str, config: Any, registry: Any, secrets: list[str | None], key_file: str | None,
                           log_lines: int) -> str:
    """The JSON answer of this node (``log_lines``: at most that many of the newest lines, 0:
    all it keeps). DiagnosticsBusy when too many are being built now. ``secrets``: what never
    leaves the node (the cluster secret); ``key_file``: its TLS key, whose lines are searched
    for as well."""
    global _in_flight
    if _in_flight >= DIAGNOSTICS_IN_FLIGHT_MAX:
        raise DiagnosticsBusy(f"{node} is already building {_in_flight} diagnostics answers; ask again shortly")
    _in_flight += 1
    try:
        lines = recent_log_lines()  # a copy of the ring (core/observe/logs.py), taken here on the loop
        notes: list[str] = [] if lines else ["no log lines kept in memory (logging was not set up by kolk)"]
        wanted = min(log_lines or DIAGNOSTICS_LOG_LINES_MAX, DIAGNOSTICS_LOG_LINES_MAX)
        return await asyncio.to_thread(_assemble, node, config, registry, secrets, key_file, lines, notes, wanted)
    finally:
        _in_flight -= 1


async def answer_node_diagnostics(node: str, config: Any, registry: Any, log_lines: int, out: Any,
                                  record: Any) -> None:
    """Fill a NodeDiagnosticsResponse ``out`` for this node, once the caller was allowed admin on
    the cluster (the SC and the SPU check it their own way): the answer, or ``overloaded``
    (retriable) while too many are being built. ``record`` audits the allowed call."""
    tls = getattr(config, "tls", None)
    try:
        out.diagnosticsJson = await node_diagnostics(node, config, registry, [getattr(config, "secret", None)],
                                                     tls.key if tls else None, int(log_lines))
    except DiagnosticsBusy as e:
        set_error(out.result, "overloaded", str(e), None, True)
        return
    record("admin", "cluster", "allow", None, "nodeDiagnostics: diagnostics collected")
    out.result.ok = True
