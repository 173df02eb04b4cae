"""The run report (jepsen/report.py): the latency SVG is well-formed XML with one shaded
rectangle per fault and one marker per drawn operation (downsampled beyond the limit), and
the results are written as results.json and summary.txt."""

from __future__ import annotations

import json
import math
import pathlib
import random
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from jepsen.nemesis import Fault  # noqa: E402
from jepsen.report import MAX_DOTS, OpPoint, downsample, latency_svg, summary_text, write_results  # noqa: E402

NS = "{http://www.w3.org/2000/svg}"


def group(root: ET.Element, gid: str) -> ET.Element:
    [g] = [g for g in root.iter(NS + "g") if g.get("id") == gid]
    return g


def ops(n: int, seed: int = 1, outcomes=("ok", "ok", "ok", "fail", "info")) -> list[tuple]:
    rng = random.Random(seed)
    return [(i * 0.01, rng.lognormvariate(2, 1.5), rng.choice(("send", "poll")), rng.choice(outcomes))
            for i in range(n)]


def test_svg_is_well_formed_with_a_rect_per_fault_and_a_dot_per_op(tmp_path):
    path = tmp_path / "latency.svg"
    faults = [(1.0, 3.5, "kill spu:leader"), (2.0, 4.0, "partition-half <minority> & co"), (4.5, None, "slow")]
    info = latency_svg(ops(500), faults, str(path))
    root = ET.parse(path).getroot()
    assert root.tag == NS + "svg" and root.get("width") == "1000" and root.get("height") == "400"
    rects = group(root, "faults").findall(NS + "rect")
    assert len(rects) == 3 and all(r.get("class") == "fault" for r in rects)
    assert all(float(r.get("fill-opacity")) < 1 for r in rects)
    labels = [t.text for t in group(root, "fault-labels").findall(NS + "text")]
    assert labels == [f[2] for f in faults]
    dots = list(group(root, "ops"))
    assert len(dots) == 500 and info["dots"] == 500 and info["ops"] == 500
    shapes = {d.tag.removeprefix(NS) for d in dots}
    assert shapes == {"circle", "rect"}  # send circles, poll squares
    sends = [d for d in dots if "send" in d.get("class").split()]
    assert sends and all(d.tag == NS + "circle" for d in sends)
    colors = {d.get("class").split()[2]: d.get("fill") for d in dots}
    assert colors == {"ok": "#2ca02c", "fail": "#d62728", "info": "#ff7f0e"}
    tick_texts = [t.text for t in group(root, "ticks").iter(NS + "text")]
    assert "0" in tick_texts and any(t.endswith("ms") for t in tick_texts)


def test_dots_stay_inside_the_plot_and_latency_is_log_scaled(tmp_path):
    path = tmp_path / "l.svg"
    latency_svg([(0, 1, "send", "ok"), (5, 10, "send", "ok"), (10, 100, "send", "ok")], [], str(path))
    root = ET.parse(path).getroot()
    dots = list(group(root, "ops"))
    xs = [float(d.get("cx")) for d in dots]
    ys = [float(d.get("cy")) for d in dots]
    assert xs == sorted(xs) and all(0 <= x <= 1000 for x in xs)
    assert ys[0] > ys[1] > ys[2]  # higher latency, higher on the page
    assert math.isclose(ys[0] - ys[1], ys[1] - ys[2], abs_tol=0.2)  # equal steps per decade


def test_downsampling_bounds_the_dots_and_keeps_failures(tmp_path):
    path = tmp_path / "big.svg"
    many = ops(25_000, outcomes=("ok",))
    assert latency_svg(many, [], str(path))["dots"] == MAX_DOTS
    assert len(list(group(ET.parse(path).getroot(), "ops"))) == MAX_DOTS
    mixed = ops(30_000, outcomes=("ok",)) + [(i * 3.0, 5000.0, "poll", "fail") for i in range(100)]
    kept = downsample([OpPoint(*o) for o in mixed], 1000)
    assert len(kept) == 1000 and sum(p.outcome == "fail" for p in kept) == 100
    assert [p.time_s for p in kept] == sorted(p.time_s for p in kept)
    # Evenly: the kept ok points span the whole run.
    ok_times = [p.time_s for p in kept if p.outcome == "ok"]
    assert ok_times[0] < 5 and ok_times[-1] > 295
    lots_of_failures = [OpPoint(i, 1, "send", "fail") for i in range(5000)] + [OpPoint(i, 1, "send", "ok")
                                                                               for i in range(5000)]
    kept = downsample(lots_of_failures, 1000)
    assert len(kept) == 1000 and sum(p.outcome == "ok" for p in kept) == 500
    assert len(downsample(lots_of_failures[:10], 1000)) == 10


def test_odd_inputs(tmp_path):
    @dataclass
    class Rec:
        time_s: float
        latency_ms: float | None
        f: str
        outcome: str

    records = [Rec(0.5, 3.0, "send", "ok"), Rec(1.0, None, "send", "info"), Rec(2.0, 0.0, "admin", "weird"),
               Rec(float("nan"), 1.0, "poll", "ok")]
    path = tmp_path / "sub" / "odd.svg"
    faults = [Fault(0.2, 1.5, "kill", "spu:1"), (3.0, 2.0, "backwards")]
    info = latency_svg(records, faults, str(path), width=600, height=300, title="a <b> & c")
    root = ET.parse(path).getroot()
    dots = list(group(root, "ops"))
    assert info["dots"] == len(dots) == 2  # None latency and NaN time are skipped
    assert {d.tag for d in dots} == {NS + "circle", NS + "polygon"}  # other functions: triangles
    assert [t.text for t in group(root, "fault-labels")] == ["kill spu:1", "backwards"]
    assert len(group(root, "faults")) == 2
    empty = tmp_path / "empty.svg"
    assert latency_svg([], [], str(empty))["dots"] == 0
    ET.parse(empty)


def test_write_results(tmp_path):
    results = {"valid": False, "workload": "queue", "seed": 7,
               "queue": {"valid": False, "lost": [3, 9], "lost_count": 2, "duplicated_count": 0},
               "faults": [{"kind": "kill"}], "nodes": {3, 1, 2}, "note": "x" * 500}
    paths = write_results(str(tmp_path / "run"), results)
    loaded = json.loads(pathlib.Path(paths["json"]).read_text())
    assert loaded["queue"]["lost"] == [3, 9] and loaded["nodes"] == [1, 2, 3]
    assert "\n  " in pathlib.Path(paths["json"]).read_text()  # indented
    summary = pathlib.Path(paths["summary"]).read_text()
    lines = summary.splitlines()
    assert lines[1] == "valid: False"
    assert "queue: valid=False, lost_count=2, duplicated_count=0" in lines
    assert "faults: 1 items" in lines
    assert all(len(line) <= 110 for line in lines)
    assert summary == summary_text(results)


@pytest.mark.parametrize("n", [1, 7])
def test_fault_objects_and_ticks_for_short_runs(tmp_path, n):
    path = tmp_path / "s.svg"
    latency_svg([(0.001 * i, 1.0, "send", "ok") for i in range(n)], [], str(path))
    root = ET.parse(path).getroot()
    assert len(group(root, "ops")) == n
    assert len(group(root, "ticks").findall(NS + "text")) >= 3
