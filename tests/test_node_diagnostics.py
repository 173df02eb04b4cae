"""A node's side of ``nodeDiagnostics`` (core/observe/node_diagnostics.py), in process: its
answer keeps within DIAGNOSTICS_BYTES_MAX and DIAGNOSTICS_LOG_LINES_MAX whatever the log ring
holds, never carries its secret or a line of its own TLS key, renders a real metrics
registry, and a third caller while two answers are being built is refused, not queued."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from kolk.observe import node_diagnostics as nd
from kolk.observe.diagnostics import Diagnostics, key_file_lines
from kolk.protocol.limits import DIAGNOSTICS_BYTES_MAX, DIAGNOSTICS_LOG_LINES_MAX
from kolk.security.certs import create_ca
from kolk.security.tls import TlsConfig

SECRET = "the-cluster-secret-0123456789"


@dataclasses.dataclass
class _Config:
    spu_id: int
    secret: str
    tls: TlsConfig


@pytest.fixture()
def key_file(tmp_path: Any) -> str:
    path = os.path.join(str(tmp_path), "node.key")
    with open(path, "wb") as f:
        f.write(create_ca("node diagnostics test")[1])
    return path


def _answer(monkeypatch: Any, lines: list[str], key_file: str, log_lines: int = 0,
            registry: Any = None) -> Diagnostics:
    monkeypatch.setattr(nd, "recent_log_lines", lambda: list(lines))
    config = _Config(7, SECRET, TlsConfig("/p/ca.crt", "/p/node.crt", key_file))
    text = asyncio.run(nd.node_diagnostics("spu-7", config, registry, [SECRET], key_file, log_lines))
    assert len(text) <= DIAGNOSTICS_BYTES_MAX
    return Diagnostics.from_json(text)


def test_the_answer_stays_within_its_limits(monkeypatch: Any, key_file: str) -> None:
    lines = [f"{i:05d} " + "x" * 2_000 for i in range(DIAGNOSTICS_LOG_LINES_MAX + 1_000)]  # ~12 MiB
    d = _answer(monkeypatch, lines, key_file)
    assert d.log_lines == lines[-len(d.log_lines):] and 3_000 < len(d.log_lines) < DIAGNOSTICS_LOG_LINES_MAX
    assert any("log cut to the newest" in n for n in d.info["notes"])
    d = _answer(monkeypatch, [f"l{i}" for i in range(DIAGNOSTICS_LOG_LINES_MAX + 10)], key_file, log_lines=10 ** 9)
    assert len(d.log_lines) == DIAGNOSTICS_LOG_LINES_MAX and d.log_lines[-1] == f"l{DIAGNOSTICS_LOG_LINES_MAX + 9}"


def test_no_secret_and_no_key_line_leaves_the_node(monkeypatch: Any, key_file: str) -> None:
    key_lines = key_file_lines(open(key_file).read())
    planted = [f"connect failed: secret {SECRET}", *(f"odd line {line} end" for line in key_lines)]
    registry = CollectorRegistry()
    Counter("kolk_test_things", "things", ["topic"], registry=registry).labels(topic=f"t-{SECRET}").inc(3)
    d = _answer(monkeypatch, planted, key_file, registry=registry)
    text = json.dumps(d.to_json())
    assert SECRET not in text and not any(line in text for line in key_lines)
    assert d.log_lines[0] == "connect failed: secret <redacted>"
    assert d.info["node"] == "spu-7" and d.info["pid"] == os.getpid() and d.info["versions"]["kolk"]
    assert d.info["settings"]["secret"] == "<redacted>" and d.info["settings"]["tls"]["key_file"] == key_file
    samples = [s for f in text_string_to_metric_families(d.metrics) for s in f.samples]
    assert any(s.name == "kolk_test_things_total" and s.value == 3 for s in samples)


def test_without_a_registry_or_log_lines_it_says_so(monkeypatch: Any, key_file: str) -> None:
    d = _answer(monkeypatch, [], key_file)
    assert d.metrics == "" and d.log_lines == []
    assert "this node has no metrics registry" in d.info["notes"]
    assert any("no log lines kept" in n for n in d.info["notes"])


def test_a_third_answer_at_once_is_refused(monkeypatch: Any, key_file: str) -> None:
    monkeypatch.setattr(nd, "recent_log_lines", lambda: ["a line"])
    config = _Config(7, SECRET, TlsConfig("/p/ca.crt", "/p/node.crt", key_file))

    async def three() -> list[Any]:
        calls = [nd.node_diagnostics("spu-7", config, None, [SECRET], key_file, 0)
                 for _ in range(nd.DIAGNOSTICS_IN_FLIGHT_MAX + 1)]
        return await asyncio.gather(*calls, return_exceptions=True)
    results = asyncio.run(three())
    assert [isinstance(r, str) for r in results] == [True] * nd.DIAGNOSTICS_IN_FLIGHT_MAX + [False]
    assert isinstance(results[-1], nd.DiagnosticsBusy) and "already building 2" in str(results[-1])
    assert isinstance(asyncio.run(nd.node_diagnostics("spu-7", config, None, [SECRET], key_file, 0)), str)
