"""Helpers for the data-lifecycle tests (issue 19): a 3-SPU cluster whose retention and cleaner
run often, and readers of a running SPU's segment files (the SPU holds its index's lock, so
the files are read directly, batch by batch, as an auditor would).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from dataplane_cluster import DataPlaneCluster
from kolk.segments import decode_records
from kolk.segments.batch import HEADER_SIZE, parse_header
from kolk.segments.file_names import SUFFIX

FAST_LIFECYCLE = ("--replica-lag-max-ms", "2000", "--heartbeat-interval-ms", "200", "--replica-fetch-wait-ms", "200",
                  "--retention-interval-ms", "200", "--cleaner-interval-ms", "200")
HEARTBEAT_TIMEOUT_MS = 1500
SMALL_SEGMENTS = {"segment_bytes": "4096", "max_message_bytes": "4096"}
CLI_TIMEOUT_S = 60


def kolk(c: DataPlaneCluster, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI against the cluster's SC (stdout and stderr captured as text)."""
    return subprocess.run([sys.executable, "-m", "kolk", *args, "--sc", ",".join(c.sc_addresses)],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, input=input,
                          stdin=None if input is not None else subprocess.DEVNULL)


def lifecycle_cluster(tmp_path: Any, spus: int = 3, **kw: Any) -> DataPlaneCluster:
    return DataPlaneCluster(str(tmp_path), spus=spus, heartbeat_timeout_ms=HEARTBEAT_TIMEOUT_MS,
                            spu_args=FAST_LIFECYCLE, **kw)


def replica_dir(c: DataPlaneCluster, spu_id: int, name: str) -> str:
    return os.path.join(c.spus[spu_id].data_dir, "logs", name)


def segment_files(c: DataPlaneCluster, spu_id: int, name: str) -> list[str]:
    d = replica_dir(c, spu_id, name)
    try:
        return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(SUFFIX))
    except FileNotFoundError:
        return []


def file_records(path: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every record in one segment file: (offset, key, value). Stops at a torn tail (the SPU
    may be appending to the active segment while we read)."""
    with open(path, "rb") as f:
        data = f.read()
    out = []
    pos = 0
    while len(data) - pos >= HEADER_SIZE:
        h = parse_header(data, pos)
        if h.size < HEADER_SIZE or pos + h.size > len(data):
            break
        out.extend((r.offset, r.key, r.value) for r in decode_records(data, pos))
        pos += h.size
    return out


def replica_records(c: DataPlaneCluster, spu_id: int, name: str) -> list[tuple[int, bytes | None, bytes | None]]:
    return [r for path in segment_files(c, spu_id, name) for r in file_records(path)]


def bytes_on_disk(c: DataPlaneCluster, spu_id: int, name: str) -> int:
    return sum(os.path.getsize(p) for p in segment_files(c, spu_id, name))


def newest_per_key(records: list[tuple[int, bytes | None, bytes | None]]) -> dict[bytes | None, bytes | None]:
    out: dict[bytes | None, bytes | None] = {}
    for _off, key, value in sorted(records, key=lambda r: r[0]):
        out[key] = value
    return out
