"""What ``kolk top`` shows: a :class:`~kolk.client.cluster_view.ClusterView` as lines of text at
most ``width`` columns wide. Pure (core/cli/top.py draws them; docs/operations.md "kolk top").

Sections, in order: a cluster line (SCs and the leader, SPUs alive, partitions under-replicated
and offline), the topics (partitions, replication factor, records in per second, records, size;
the internal topics last), the ISR health table (only the partitions that are not ok, worst
first), the consumer groups (state, members, lag), and one line per part that could not be
collected. A name longer than its column is cut with an ellipsis; every line is cut to ``width``.
"""

from __future__ import annotations

import fnmatch
import time
from typing import Any, Callable, Sequence

from ..client.cluster_view import HEALTH_OFFLINE, HEALTH_OK, HEALTH_UNDER_REPLICATED, ClusterView
from ..client.partition_status import human_bytes

WIDTH_MIN = 40
NAME_CHARS_MAX = 28  # a topic or group name's column; longer names end in an ellipsis
ELLIPSIS = "…"
TITLE = "kolk top"  # every view's first line starts with it


def cut(text: str, n: int) -> str:
    """``text`` in at most ``n`` characters, ending in an ellipsis when it was longer."""
    if len(text) <= n:
        return text
    return text[:max(n - 1, 0)] + ELLIPSIS if n > 0 else ""


def count(n: int | None) -> str:
    """A count in at most 6 characters: 999, 12.3k, 4.5M, 7.0G."""
    if n is None:
        return "-"
    if n < 1000:
        return str(n)
    value = float(n)
    for unit in ("k", "M", "G", "T"):
        value /= 1000
        if value < 999.95 or unit == "T":
            return f"{value:.1f}{unit}"
    raise AssertionError("unreachable")


def rate(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.1f}" if r < 100 else count(round(r))


def table(header: Sequence[str], rows: list[list[str]], width: int, left: int = 1) -> list[str]:
    """Columns two spaces apart: the first ``left`` left-aligned (the first, a name, cut to fit),
    the rest (numbers) right-aligned."""
    cells = [list(header)] + rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    rest = sum(widths[1:]) + 2 * (len(header) - 1)
    widths[0] = max(min(widths[0], NAME_CHARS_MAX, width - rest), 4)
    out = []
    for row in cells:
        parts = [cut(c, widths[i]).ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(row)]
        out.append(cut("  ".join(parts).rstrip(), width))
    return out


def _matches(pattern: str | None) -> Callable[[str], bool]:
    return (lambda name: True) if pattern is None else (lambda name: fnmatch.fnmatchcase(name, pattern))


def cluster_lines(view: ClusterView) -> list[str]:
    """The SCs and the leader, the SPUs alive (naming those down), and the partitions' health."""
    reachable = sum(1 for s in view.scs if s.reachable)
    leader = f"leader sc-{view.leader_sc}" if view.leader_sc is not None else "NO LEADER"
    down = [str(s.id) for s in view.spus if not s.alive]
    spus = f"SPUs {len(view.spus) - len(down)}/{len(view.spus)} alive" + (f" (down: {','.join(down)})" if down else "")
    return [f"SCs {reachable}/{len(view.scs)} up, {leader}   {spus}",
            f"partitions {len(view.partitions)}   under-replicated {view.count(HEALTH_UNDER_REPLICATED)}   "
            f"offline {view.count(HEALTH_OFFLINE)}"]


def render(view: ClusterView, *, width: int = 80, topic_glob: str | None = None) -> list[str]:
    """The lines of one view."""
    width = max(width, WIDTH_MIN)
    match = _matches(topic_glob)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(view.taken_at_ms / 1000))
    lines = [f"{TITLE}  {stamp}", *cluster_lines(view), ""]

    topics = sorted((t for t in view.topics if match(t.name)), key=lambda t: (t.internal, t.name))
    rows = [[t.name, str(t.partitions), str(t.replication_factor), rate(t.in_records_per_s), count(t.records),
             human_bytes(t.size_bytes) or "-"] for t in topics]
    lines.append(f"TOPICS ({len(topics)})")
    lines += table(["TOPIC", "PARTS", "RF", "IN/S", "RECORDS", "SIZE"], rows, width) if rows else ["  none"]
    lines.append("")

    order = {HEALTH_OFFLINE: 0, HEALTH_UNDER_REPLICATED: 1}
    bad = sorted((p for p in view.partitions if p.health != HEALTH_OK and match(p.topic)),
                 key=lambda p: (order.get(p.health, 2), p.topic, p.partition))
    lines.append(f"ISR HEALTH ({len(bad)} not ok)")
    if bad:
        ids = lambda xs: ",".join(str(x) for x in xs) or "-"  # noqa: E731
        rows = [[f"{p.topic}-{p.partition}", p.health, "-" if p.leader is None else str(p.leader), ids(p.replicas),
                 ids(p.isr), count(p.lag_max)] for p in bad]
        lines += table(["PARTITION", "HEALTH", "LEADER", "REPLICAS", "ISR", "LAG"], rows, width, left=2)
    else:
        lines.append("  every partition is in sync")
    lines.append("")

    groups = [g for g in view.groups if topic_glob is None or any(match(p.topic) for p in g.partitions)]
    lines.append(f"CONSUMER GROUPS ({len(groups)})")
    rows = [[g.name, g.state, str(g.members), count(g.lag), "-" if g.coordinator is None else str(g.coordinator)]
            for g in groups]
    lines += table(["GROUP", "STATE", "MEMBERS", "LAG", "COORD"], rows, width, left=2) if rows else ["  none"]
    for e in view.errors:
        lines.append(cut(f"! {e}", width))
    return [cut(line, width) for line in lines]


def fit_height(lines: list[str], height: int) -> list[str]:
    """At most ``height`` lines (at least 2); the last says how many more there were."""
    height = max(height, 2)
    if len(lines) <= height:
        return lines
    return lines[:height - 1] + [f"… {len(lines) - height + 1} more lines (a taller terminal shows them)"]


def view_json(view: ClusterView) -> dict[str, Any]:
    """The view as JSON values (``kolk top --json``)."""
    from dataclasses import asdict

    return asdict(view)
