"""What ships for operators beside the metrics: the Grafana dashboard, the Prometheus rules and
alerts (docs/grafana/, docs/prometheus/) only use metrics docs/metrics.md documents, and every
expression parses (`promtool check rules`, from Debian's prometheus package)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any, Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
DASHBOARD = os.path.join(DOCS, "grafana", "kolk-dashboard.json")
RULES = os.path.join(DOCS, "prometheus", "rules.yml")
ALERTS = os.path.join(DOCS, "prometheus", "alerts.yml")
PROMTOOL = "/usr/bin/promtool"
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
_NAME = re.compile(r"\bkolk[_:][a-zA-Z0-9_:]*")
_TABLE_NAME = re.compile(r"^\| `(kolk[_:][a-zA-Z0-9_:]*)` \|", re.M)


def documented() -> dict[str, str]:
    """Every metric and recording rule named in a table of docs/metrics.md: name -> its row."""
    with open(os.path.join(DOCS, "metrics.md"), encoding="utf-8") as f:
        text = f.read()
    return {m.group(1): text[m.start():text.index("\n", m.start())] for m in _TABLE_NAME.finditer(text)}


def as_documented(name: str, names: dict[str, str]) -> str | None:
    """The documented name ``name`` (a series of) belongs to, or None."""
    if name in names:
        return name
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and base in names and "histogram" in names[base]:
            return base
    return None


def dashboard() -> dict[str, Any]:
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def panel_exprs() -> Iterator[tuple[str, str]]:
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


def rule_exprs() -> Iterator[tuple[str, str]]:
    """(file, expr) of every rule; a small reader for the files' one shape (expr: on one line or a | block)."""
    for path in (RULES, ALERTS):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            if not stripped.startswith("expr:"):
                continue
            value = stripped[len("expr:"):].strip()
            if value == "|":
                indent = len(lines[i + 1]) - len(lines[i + 1].lstrip())
                block = []
                for following in lines[i + 1:]:
                    if following.strip() and len(following) - len(following.lstrip()) < indent:
                        break
                    block.append(following.strip())
                value = " ".join(block)
            yield os.path.basename(path), value


def test_the_dashboard_is_a_grafana_dashboard_whose_panels_all_query() -> None:
    d = dashboard()
    assert d["uid"] == "kolk-overview" and d["title"] == "Kolk"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    charts = [p for p in d["panels"] if p["type"] != "row"]
    assert len(charts) >= 20
    for p in charts:
        assert p["targets"], f"panel {p['title']!r} has no query"
        assert p["datasource"]["uid"] == "${datasource}"
        assert all(t["expr"].strip() for t in p["targets"])
    titles = " | ".join(p["title"] for p in charts)
    for wanted in ("Records in per topic", "Records out per topic", "Produce p99 by acks", "fsync p99",
                   "Under-replicated", "Offline", "Consumer lag", "Disk per SPU", "Event-loop lag", "Resident memory"):
        assert wanted in titles, f"no panel for {wanted}: {titles}"


def test_every_metric_the_dashboard_and_rules_use_is_documented() -> None:
    names = documented()
    assert len(names) >= 40, sorted(names)
    used = [(where, expr) for where, expr in panel_exprs()] + list(rule_exprs())
    assert len(used) > 40
    for where, expr in used:
        found = _NAME.findall(expr)
        assert found or "up{" in expr, f"{where}: {expr} queries no Kolk metric"
        for name in found:
            assert as_documented(name, names), f"{where}: {name} is not in docs/metrics.md's tables ({expr})"


def test_the_documented_tables_hold_no_name_twice() -> None:
    with open(os.path.join(DOCS, "metrics.md"), encoding="utf-8") as f:
        rows = _TABLE_NAME.findall(f.read())
    assert len(rows) == len(set(rows)), sorted(n for n in rows if rows.count(n) > 1)


@pytest.mark.parametrize("path", [RULES, ALERTS], ids=["rules", "alerts"])
def test_promtool_accepts_the_shipped_rules(path: str) -> None:
    done = subprocess.run([PROMTOOL, "check", "rules", path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def dashboard_rules_file(directory: str, job: str = ".*") -> str:
    """The dashboard's queries as recording rules (``$job`` given its value), for promtool and Prometheus."""
    lines = ["groups:", "  - name: kolk-dashboard", "    rules:"]
    for i, (_, expr) in enumerate(panel_exprs()):
        lines += [f"      - record: kolk_dashboard_panel_{i}", f"        expr: {json.dumps(expr.replace('$job', job))}"]
    path = os.path.join(directory, "dashboard-rules.yml")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_every_dashboard_query_parses(tmp_path: Any) -> None:
    path = dashboard_rules_file(str(tmp_path))
    done = subprocess.run([PROMTOOL, "check", "rules", path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(list(panel_exprs()))} rules found" in done.stdout
