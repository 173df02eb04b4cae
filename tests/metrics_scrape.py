"""Scraping a real node's /metrics (and /health) in tests: plain HTTP or HTTPS with a client
certificate, parsed with prometheus_client's own parser (docs/metrics.md)."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

SCRAPE_TIMEOUT_S = 10.0


def ready_metrics(ready_file: str) -> str:
    """The bound metrics address a node wrote in its ready file."""
    with open(ready_file) as f:
        return str(json.load(f)["metrics"])


def get(address: str, path: str, tls: Any = None) -> tuple[int, str]:
    """(status, body) of GET ``path``; with ``tls`` (a TlsConfig) over HTTPS with its certificate."""
    context: ssl.SSLContext | None = tls.client_context() if tls is not None else None
    url = f"{'https' if context else 'http'}://{address}{path}"
    try:
        with urllib.request.urlopen(url, context=context, timeout=SCRAPE_TIMEOUT_S) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Samples:
    """One scrape: ``value(name, **labels)`` of a sample (0.0 when absent: counters start there)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, tuple(sorted(labels.items()))) in self.samples

    def labelled(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def scrape(address: str, tls: Any = None) -> Samples:
    status, body = get(address, "/metrics", tls)
    assert status == 200, f"/metrics of {address} answered {status}: {body[:200]}"
    return Samples(body)
