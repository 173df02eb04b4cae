"""The peer benchmark's tables and goal checks, and its section of ``docs/benchmarks.md``.

Pure functions over the results dict that ``peers_bench.py`` collects:
``results[system] = {"durability": str, "produce_100": [records/s per round], ...}``; per round
also ``rss_idle`` / ``rss_after`` (bytes, every server process together), ``rss_idle_by_process``
/ ``rss_after_by_process`` ({process name: [bytes per round]}), ``start_ms``, and from the
latency run ``cpu_us_per_request`` (CPU of the processes serving produce requests over the
timed records, in µs, divided by the produce requests sent; None where no pid was known),
``records_per_request`` and ``cpu_us_per_record``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

HEADING = "## Side by side with NATS JetStream and Redis Streams (issue 9) — `make bench-peers`"

KOLK, NATS, REDIS, REDIS_ALWAYS = "Kolk", "NATS JetStream", "Redis Streams", "Redis Streams, fsync always"
KOLK_SEND = "Kolk, one send per record"
KOLK_3, NATS_3 = "Kolk, 3 SPUs", "NATS JetStream, 3 nodes"
SINGLE = [KOLK, KOLK_SEND, NATS, REDIS, REDIS_ALWAYS]
SERVERS = [KOLK, NATS, REDIS, REDIS_ALWAYS]  # the single-node systems with their own server run
CLUSTER = [KOLK_3, NATS_3]


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile, ``p`` in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(p / 100 * (len(s) - 1)))))]


def median(values: list[float | None]) -> float | None:
    """The median of the known values (None is a round where the value could not be read)."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


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


MIB = 1 << 20
CPU_LABEL = "server CPU per request at {rate:,} records/s, µs (Kolk: the SPU)"
START_LABEL = ("start to serving ms (spawn of the first server process to the first answered round trip; "
               "Kolk: `local_cluster.start(1)`, what `kolk cluster start --spus 1` runs, called in the "
               "benchmark's process, then a metadata call)")


def process_label(name: str, names: list[str]) -> str:
    """"sc" -> "SC"; "spu-1" -> "SPU" when it is the only SPU, else "SPU 1"; others as named."""
    if name == "sc":
        return "SC"
    if name.startswith("spu-"):
        return "SPU" if sum(n.startswith("spu-") for n in names) == 1 else f"SPU {name[4:]}"
    return name


def rss_text(r: dict, key: str) -> str:
    """Median MiB over rounds of every server process together; with more than one process,
    also each on its own: "56 = SC 25 + SPU 31" (medians each, so the parts may not add up)."""
    total = _n(_scaled(median(r.get(key) or []), MIB), ".0f")
    by = r.get(f"{key}_by_process") or {}
    if len(by) < 2:
        return total
    parts = " + ".join(f"{process_label(name, list(by))} {_n(_scaled(median(xs), MIB), '.0f')}"
                       for name, xs in by.items())
    return f"{total} = {parts}"


def summary(results: dict) -> dict:
    """The medians the tables show, per system, for the results JSON."""
    out: dict = {}
    for name, r in results.items():
        s: dict = {"durability": r.get("durability")}
        for m in ("produce_100", "produce_1k", "consume"):
            if r.get(m):
                s[m] = value(results, name, m)
        if r.get("latency_ms"):
            for p in ("p50", "p99", "p99.9"):
                s[f"latency_{p}_ms"] = value(results, name, p)
        for key in ("cpu_us_per_request", "records_per_request", "cpu_us_per_record", "rss_idle", "rss_after", "start_ms"):
            if key in r:
                s[key] = median(r[key])
        for key in ("cpu_us_per_request_by_process", "rss_idle_by_process", "rss_after_by_process"):
            if key in r:
                s[key] = {proc: median(xs) for proc, xs in r[key].items()}
        out[name] = s
    return out


def tables(results: dict, rate: int) -> str:
    """Markdown: the single-node table, its server processes' costs, the 3-replica table,
    per-round values, and the goals."""
    out = ["Single node (medians over rounds; latency percentiles over every round's records):", "",
           "| system | produce 100 B records/s | produce 1 KiB records/s | consume 100 B records/s | "
           f"latency p50 / p99 / p99.9 ms at {rate:,}/s |",
           "| --- | ---: | ---: | ---: | ---: |"]
    for name in SINGLE:
        if name not in results:
            continue
        r = results[name]
        lat = (f"{_n(value(results, name, 'p50'), '.2f')} / {_n(value(results, name, 'p99'), '.2f')} / "
               f"{_n(value(results, name, 'p99.9'), '.2f')}") if r.get("latency_ms") else "—"
        out.append(f"| {name} | {_n(value(results, name, 'produce_100'))} | {_n(value(results, name, 'produce_1k'))} | "
                   f"{_n(value(results, name, 'consume'))} | {lat} |")
    servers = [name for name in SERVERS if name in results]
    if servers:
        out += ["", "Single node, the server processes (medians over rounds; RSS of every server process "
                "together, Kolk's SC and SPU also each on their own):", "",
                "| measure | " + " | ".join(servers) + " |", "| --- |" + " ---: |" * len(servers)]
        rows = [
            (CPU_LABEL.format(rate=rate), lambda r: _n(median(r.get("cpu_us_per_request") or []), ",.1f")),
            ("records per produce request in that window",
             lambda r: _n(median(r.get("records_per_request") or []), ".2f")),
            ("server CPU per record in that window, µs", lambda r: _n(median(r.get("cpu_us_per_record") or []), ",.1f")),
            ("RSS idle MiB", lambda r: rss_text(r, "rss_idle")),
            ("RSS after MiB", lambda r: rss_text(r, "rss_after")),
            (START_LABEL, lambda r: _n(median(r.get("start_ms") or []))),
        ]
        for label, cell in rows:
            out.append(f"| {label} | " + " | ".join(cell(results[name]) for name in servers) + " |")
    out += ["", "3 nodes, 3 replicas (medians over rounds):", "",
            "| system | produce 100 B records/s | produce 1 KiB records/s | RSS after MiB, every server process |",
            "| --- | ---: | ---: | ---: |"]
    for name in CLUSTER:
        if name not in results:
            continue
        r = results[name]
        out.append(f"| {name} | {_n(value(results, name, 'produce_100'))} | {_n(value(results, name, 'produce_1k'))} | "
                   f"{_n(_scaled(median(r.get('rss_after') or []), MIB), '.0f')} |")
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
