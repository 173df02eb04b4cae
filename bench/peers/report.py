"""The peer benchmark's tables and goal checks, and its section of ``docs/benchmarks.md``.

Pure functions over the results dict that ``peers_bench.py`` collects:
``results[system] = {"durability": str, "produce_100": [records/s per round], ...}``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

HEADING = "## Side by side with NATS JetStream and Redis Streams (issue 9) — `make bench-peers`"

KOLK, NATS, REDIS, REDIS_ALWAYS = "Kolk", "NATS JetStream", "Redis Streams", "Redis Streams, fsync always"
KOLK_SEND = "Kolk, one send per record"
KOLK_3, NATS_3 = "Kolk, 3 SPUs", "NATS JetStream, 3 nodes"
SINGLE = [KOLK, KOLK_SEND, NATS, REDIS, REDIS_ALWAYS]
CLUSTER = [KOLK_3, NATS_3]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile, ``p`` in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))]


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


@dataclass(frozen=True)
class Goal:
    text: str
    measure: str  # key in the results: produce_100, consume, or p99
    kolk: str
    peer: str
    target: float
    higher_is_better: bool = True

    def ratio(self, results: dict) -> float | None:
        k, p = value(results, self.kolk, self.measure), value(results, self.peer, self.measure)
        if k is None or p is None or p == 0:
            return None
        return k / p

    def met(self, ratio: float | None) -> bool | None:
        if ratio is None:
            return None
        return ratio >= self.target if self.higher_is_better else ratio <= self.target


GOALS = [
    Goal("produce 100 B, single node: Kolk / JetStream", "produce_100", KOLK, NATS, 10.0),
    Goal("produce 100 B, single node: Kolk / Redis Streams", "produce_100", KOLK, REDIS, 5.0),
    Goal("produce 100 B, 3 replicas: Kolk / JetStream", "produce_100", KOLK_3, NATS_3, 8.0),
    Goal("consume from the beginning: Kolk / Redis XREAD", "consume", KOLK, REDIS, 3.0),
    Goal("consume from the beginning: Kolk / JetStream pull consumer", "consume", KOLK, NATS, 30.0),
    Goal("p99 latency at 2,000 records/s: Kolk / JetStream", "p99", KOLK, NATS, 2.0, higher_is_better=False),
]


def value(results: dict, system: str, measure: str) -> float | None:
    r = results.get(system)
    if r is None:
        return None
    if measure in ("p50", "p99", "p99.9"):
        lat = r.get("latency_ms") or []
        return percentile(lat, float(measure[1:])) if lat else None
    return median(r.get(measure) or [])


def _n(x: float | None, fmt: str = ",.0f") -> str:
    return "—" if x is None else format(x, fmt)


def _rounds(xs: list[float]) -> str:
    return ", ".join(f"{x:,.0f}" for x in xs) if xs else "—"


def tables(results: dict, rate: int) -> str:
    """Markdown: the single-node table, the 3-replica table, per-round values, and the goals."""
    out = ["Single node (medians over rounds; latency percentiles over every round's records):", "",
           "| system | produce 100 B records/s | produce 1 KiB records/s | consume 100 B records/s | "
           f"latency p50 / p99 / p99.9 ms at {rate:,}/s | RSS idle MiB | RSS after MiB | start to serving ms |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in SINGLE:
        if name not in results:
            continue
        r = results[name]
        lat = (f"{_n(value(results, name, 'p50'), '.2f')} / {_n(value(results, name, 'p99'), '.2f')} / "
               f"{_n(value(results, name, 'p99.9'), '.2f')}") if r.get("latency_ms") else "—"
        mib = 1 << 20
        out.append(f"| {name} | {_n(value(results, name, 'produce_100'))} | {_n(value(results, name, 'produce_1k'))} | "
                   f"{_n(value(results, name, 'consume'))} | {lat} | "
                   f"{_n(_scaled(median(r.get('rss_idle') or []), mib), '.0f')} | "
                   f"{_n(_scaled(median(r.get('rss_after') or []), mib), '.0f')} | "
                   f"{_n(median(r.get('start_ms') or []))} |")
    out += ["", "3 nodes, 3 replicas (medians over rounds):", "",
            "| system | produce 100 B records/s | produce 1 KiB records/s | RSS after MiB |",
            "| --- | ---: | ---: | ---: |"]
    for name in CLUSTER:
        if name not in results:
            continue
        r = results[name]
        out.append(f"| {name} | {_n(value(results, name, 'produce_100'))} | {_n(value(results, name, 'produce_1k'))} | "
                   f"{_n(_scaled(median(r.get('rss_after') or []), 1 << 20), '.0f')} |")
    out += ["", "Durability of each system as run:", ""]
    for name in SINGLE + CLUSTER:
        if name in results:
            out.append(f"- {name}: {results[name]['durability']}")
    out += ["", "Per round (records/s):", "", "| system | produce 100 B | produce 1 KiB | consume 100 B |",
            "| --- | --- | --- | --- |"]
    for name in SINGLE + CLUSTER:
        if name in results:
            r = results[name]
            out.append(f"| {name} | {_rounds(r.get('produce_100', []))} | {_rounds(r.get('produce_1k', []))} | "
                       f"{_rounds(r.get('consume', []))} |")
    out += ["", "Goals (ratios of the medians above):", "", "| goal | ratio | target | met |", "| --- | ---: | ---: | --- |"]
    for g in GOALS:
        ratio = g.ratio(results)
        met = g.met(ratio)
        sign = ">=" if g.higher_is_better else "<="
        out.append(f"| {g.text} | {_n(ratio, '.2f')}× | {sign} {g.target:g}× | "
                   f"{'—' if met is None else ('yes' if met else '**no**')} |")
    return "\n".join(out)


def _scaled(x: float | None, by: float) -> float | None:
    return None if x is None else x / by


def section(results: dict, rate: int, when: str, machine: str, versions: dict[str, str], setup: str,
            steadiness: str | None = None) -> str:
    vers = ", ".join(f"{k} {v}" for k, v in versions.items())
    lines = [HEADING, "", f"Run on {when}, on {machine}.", "", f"Versions: {vers}.", ""]
    if steadiness:
        lines += [f"Machine steadiness, measured just before the run: {steadiness}.", ""]
    return "\n".join(lines + [setup, "", "```", tables(results, rate), "```", ""])


def replace_section(doc: str, new_section: str) -> str:
    """``doc`` with the section under :data:`HEADING` replaced by ``new_section`` (appended
    if absent); the next ``## `` heading, or the end, closes the section."""
    start = doc.find(HEADING)
    if start < 0:
        return doc.rstrip("\n") + "\n\n" + new_section
    end = doc.find("\n## ", start + len(HEADING))
    tail = "" if end < 0 else doc[end + 1:]
    return doc[:start] + new_section + ("\n" + tail if tail else "")
