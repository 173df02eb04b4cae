"""One row of ``kolk partition list``: what the SC says about a partition joined with what the
SPUs holding its replicas report (``partitionStatus``, core/spu/replication_api.py). Pure.

An SPU answers, for every replica it holds among those asked, a JSON entry with ``partition``,
``spu``, ``role`` (leader, follower or none), ``leader``, ``epoch``, ``isr``, ``high_watermark``,
``log_start_offset``, ``log_end_offset``, ``size_bytes``, ``segments``, ``cleaned_offset``,
``fenced``, ``failure`` and ``followers`` (the leader's view of each follower's log end and lag).
An older SPU answers only for the replicas it leads and without the role, size and segment
keys: a key that is missing is unknown (None), never guessed.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..metadata.controllers import offline_reason
from ..metadata.specs import PartitionSpec, PartitionStatus

PARTITION_STATUS_TIMEOUT_S = 5.0  # the most one SPU's partitionStatus answers are waited for
PARTITION_STATUS_SPUS_IN_FLIGHT_MAX = 64  # SPUs asked at the same time

# The keys of one replica's own log in a row's ``replica_logs``, as the SPU names them.
REPLICA_LOG_KEYS = ("log_start_offset", "log_end_offset", "high_watermark", "size_bytes", "segments",
                    "cleaned_offset", "fenced", "failure")

# What each SPU asked answered: partition name -> its entry, or why there is no answer.
Reports = Mapping[int, "Mapping[str, Mapping[str, Any]] | str"]


def _leader_entry(status: PartitionStatus, reports: Reports, name: str) -> Mapping[str, Any] | None:
    """The leader's entry, when the SPU the SC names as leader reported it as leader."""
    answer = reports.get(status.leader) if status.leader is not None else None
    if not isinstance(answer, Mapping):
        return None
    d = answer.get(name)
    if d is None or d.get("role", "leader") != "leader":
        return None
    return d


def replica_log(spu: int, spec: PartitionSpec, status: PartitionStatus, reports: Reports,
                alive: set[int]) -> dict[str, Any]:
    """Replica ``spu`` of the partition: its role and its own log as its SPU reported them,
    or every value None and ``error`` saying why not."""
    row: dict[str, Any] = {"spu": spu, "role": None, "in_sync": spu in status.isr, "error": None}
    row.update({k: None for k in REPLICA_LOG_KEYS})
    answer = reports.get(spu)
    if answer is None:  # only live SPUs and leaders are asked
        row["error"] = f"SPU {spu} is down" if spu not in alive else f"SPU {spu} was not asked"
    elif isinstance(answer, str):
        row["error"] = answer
    elif spec.name not in answer:
        row["error"] = f"SPU {spu} did not report this replica"
    else:
        d = answer[spec.name]
        row["role"] = d.get("role", "leader" if spu == status.leader else None)
        row.update({k: d.get(k) for k in REPLICA_LOG_KEYS})
        if d.get("failure"):
            row["error"] = f"disk failed: {d['failure']}"
        elif d.get("fenced"):
            row["error"] = "fenced"
    return row


def partition_row(spec: PartitionSpec, status: PartitionStatus, reports: Reports, alive: set[int]) -> dict[str, Any]:
    """The partition's row: the SC's view, its leader's offsets and followers' lag, and
    ``replica_logs``, one entry per replica in the order of ``spec.replicas``."""
    d = _leader_entry(status, reports, spec.name)
    followers = dict(d.get("followers") or {}) if d else {}
    lags = [f.get("lag") for f in followers.values() if f.get("lag") is not None]
    if d is None:
        lag = None
    elif not followers:
        lag = 0
    else:
        lag = max(lags) if len(lags) == len(followers) else None
    return {
        "name": spec.name, "topic": spec.topic, "partition": spec.partition, "leader": status.leader,
        "epoch": status.epoch, "replicas": list(spec.replicas), "isr": list(status.isr),
        "high_watermark": d.get("high_watermark") if d else None,
        "log_start_offset": d.get("log_start_offset") if d else None,
        "log_end_offset": d.get("log_end_offset") if d else None,
        "lag": lag, "followers": followers, "lost": [e.to_dict() for e in status.lost],
        "error": _partition_note(spec, status, reports, alive, d),
        "replica_logs": [replica_log(r, spec, status, reports, alive) for r in spec.replicas],
    }


def _partition_note(spec: PartitionSpec, status: PartitionStatus, reports: Reports, alive: set[int],
                    leader_entry: Mapping[str, Any] | None) -> str | None:
    """Why the partition is offline, why its leader's numbers are missing, or which of its
    replicas lost data; None when all is well."""
    if status.leader is None:
        return offline_reason(status, list(spec.replicas), alive)
    if leader_entry is None:
        answer = reports.get(status.leader)
        if isinstance(answer, str):
            return answer
        if status.leader not in alive:
            return f"its leader SPU {status.leader} is down"
        return f"its leader SPU {status.leader} did not report it as leader (yet)"
    if not status.lost:
        return None
    return "; ".join(f"SPU {e.spu} lost data ({e.reason}), " + ("catching up" if e.spu in alive else "down")
                     for e in status.lost)


def human_bytes(n: int | None) -> str | None:
    """A byte count for a person: 512, 4.0KiB, 1.5MiB, 2.0GiB (one word, no space)."""
    if n is None:
        return None
    if n < 1024:
        return str(n)
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.1f}{unit}"
    raise AssertionError("unreachable")
