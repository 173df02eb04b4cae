"""The peer benchmark's pure parts (bench/peers/report.py): percentiles, goal checks, the
table, and the rewrite of its section of docs/benchmarks.md."""

from __future__ import annotations

import os
import sys

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))

from peers import report  # noqa: E402

values = st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=200)


@given(values, st.floats(min_value=0, max_value=100))
def test_percentile_is_a_sample_with_the_right_rank(xs: list[float], p: float) -> None:
    got = report.percentile(xs, p)
    assert got in xs
    below = sum(1 for x in xs if x < got)
    at_or_below = sum(1 for x in xs if x <= got)
    rank = int(round(p / 100 * (len(xs) - 1)))
    assert below <= rank < at_or_below


def test_percentile_of_nothing_is_an_error() -> None:
    try:
        report.percentile([], 99)
    except ValueError as exc:
        assert "no values" in str(exc)
    else:
        raise AssertionError("expected ValueError")


def results(kolk_p100: float, nats_p100: float, kolk_lat: list[float], nats_lat: list[float]) -> dict:
    return {
        report.KOLK: {"durability": "fsync", "produce_100": [kolk_p100, kolk_p100 * 2, kolk_p100 / 2],
                      "latency_ms": kolk_lat, "rss_idle": [1 << 20], "rss_after": [2 << 20], "start_ms": [10.0]},
        report.NATS: {"durability": "buffered", "produce_100": [nats_p100], "latency_ms": nats_lat},
    }


def goal(text_start: str) -> report.Goal:
    return next(g for g in report.GOALS if g.text.startswith(text_start) and "JetStream" in g.text)


def test_throughput_goal_uses_medians_and_needs_the_ratio() -> None:
    g = goal("produce 100 B, single node")
    r = results(100.0, 10.0, [1.0], [1.0])
    assert g.ratio(r) == 10.0 and g.met(g.ratio(r)) is True
    r = results(99.0, 10.0, [1.0], [1.0])
    assert g.met(g.ratio(r)) is False


def test_latency_goal_is_lower_is_better() -> None:
    g = goal("p99 latency")
    assert g.met(g.ratio(results(1, 1, [2.0] * 100, [1.0] * 100))) is True
    assert g.met(g.ratio(results(1, 1, [2.5] * 100, [1.0] * 100))) is False


def test_a_missing_system_leaves_the_goal_unjudged() -> None:
    g = goal("produce 100 B, 3 replicas")
    assert g.ratio(results(1, 1, [1.0], [1.0])) is None and g.met(None) is None
    text = report.tables(results(1, 1, [1.0], [1.0]), 2000)
    assert "| produce 100 B, 3 replicas: Kolk / JetStream | —× | >= 8× | — |" in text


def test_table_shows_medians_memory_and_durability() -> None:
    text = report.tables(results(100.0, 10.0, [1.0, 2.0, 3.0], [1.0]), 2000)
    assert "| Kolk | 100 | — | — | 2.00 / 3.00 / 3.00 |" in text
    assert "| measure | Kolk | NATS JetStream |" in text
    assert "| RSS idle MiB | 1 | — |" in text and "| RSS after MiB | 2 | — |" in text
    assert f"| {report.START_LABEL} | 10 | — |" in text
    assert "`kolk cluster start --spus 1`" in report.START_LABEL
    assert "- NATS JetStream: buffered" in text
    assert "| Kolk | 100, 200, 50 | — | — |" in text


def test_server_table_shows_cpu_per_request_and_each_kolk_process() -> None:
    r = results(100.0, 10.0, [1.0], [1.0])
    r[report.KOLK].update({
        "cpu_us_per_request": [80.0, 120.0, 100.0], "records_per_request": [1.0, 1.5, 1.25],
        "rss_idle": [60 << 20], "rss_idle_by_process": {"sc": [25 << 20], "spu-1": [35 << 20]},
        "rss_after_by_process": {"sc": [26 << 20], "spu-1": [40 << 20]}, "rss_after": [66 << 20]})
    r[report.NATS].update({"cpu_us_per_request": [None], "records_per_request": [1.0],
                           "rss_idle": [12 << 20], "rss_idle_by_process": {"nats-server": [12 << 20]}})
    text = report.tables(r, 2000)
    # a round whose pid was not known is "—", not a zero
    assert "| server CPU per request at 2,000 records/s, µs (Kolk: the SPU) | 100.0 | — |" in text
    assert "| records per produce request in that window | 1.25 | 1.00 |" in text
    assert "| server CPU per record in that window, µs | — | — |" in text
    assert "| RSS idle MiB | 60 = SC 25 + SPU 35 | 12 |" in text
    assert "| RSS after MiB | 66 = SC 26 + SPU 40 | — |" in text
    s = report.summary(r)
    assert s[report.KOLK]["cpu_us_per_request"] == 100.0 and s[report.NATS]["cpu_us_per_request"] is None
    assert s[report.KOLK]["rss_idle_by_process"] == {"sc": 25 << 20, "spu-1": 35 << 20}


def test_cpu_ticks_are_utime_plus_stime_past_an_awkward_command_name() -> None:
    from peers import procs

    # fields 14 (utime) and 15 (stime); the name in parentheses holds spaces and a ")"
    stat = "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 3 0 123 456 789"
    assert procs.stat_cpu_ticks(stat) == 12
    with open(f"/proc/{os.getpid()}/stat", encoding="ascii") as f:
        assert procs.stat_cpu_ticks(f.read()) >= 0


DOC = "# Benchmarks\n\n## Storage\n\nold storage\n\n" + report.HEADING + "\n\nold table\n\n## Later\n\nkept\n"


def test_replace_section_rewrites_only_its_own_section() -> None:
    new = report.HEADING + "\n\nnew table\n"
    out = report.replace_section(DOC, new)
    assert "old table" not in out and "new table" in out
    assert out.startswith("# Benchmarks\n\n## Storage\n\nold storage\n\n")
    assert out.endswith("\n## Later\n\nkept\n")
    assert report.replace_section(out, new) == out


def test_replace_section_appends_when_absent() -> None:
    new = report.HEADING + "\n\nnew table\n"
    out = report.replace_section("# Benchmarks\n\n## Storage\n\nx\n", new)
    assert out == "# Benchmarks\n\n## Storage\n\nx\n\n" + new
