"""A real cluster with the SC's web console on, and the data the console tests look at.

:func:`console_cluster` starts one SC with ``--console 127.0.0.1:0`` (its ready file names the
port the OS handed out) and ``spus`` SPUs; :func:`fill` creates topics, produces, stores a
SmartModule and commits a consumer group's offsets, so every console page has something to
show. :class:`Tables` reads a page's tables the way the console writes them (``data-key`` on
each row, ``data-col`` and ``data-value`` on each cell).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from html.parser import HTMLParser
from typing import Any

from dataplane_cluster import DataPlaneCluster, wait_committed, wait_until
from jepsen.cluster import wait_for
from kolk.client.client import AsyncClient
from kolk.client.consumer import Offset
from kolk.smartmodule.build import build_c

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "smartmodule", "examples")
WAIT_S = 30.0
A1_RECORDS = 12  # produced to a1 (2 partitions), 6 each
B1_RECORDS = 3
COMMITTED = {0: 4, 1: 5}  # group "ga" on a1: lag 2 + 1 = 3


def console_cluster(root: str, spus: int = 2, **kwargs: Any) -> tuple[DataPlaneCluster, str]:
    """Start a cluster whose SC serves the console; return it and the console's host:port."""
    ready = os.path.join(root, "sc.ready")
    c = DataPlaneCluster(root, spus=spus, sc_args=("--console", "127.0.0.1:0", "--ready-file", ready), **kwargs)
    try:
        c.start()
        wait_for(lambda: os.path.exists(ready), WAIT_S, "the SC's ready file")
        with open(ready) as f:
            address = json.load(f)["console"]
        return c, address
    except BaseException:
        c.close()
        raise


async def fill(client: AsyncClient) -> None:
    """Topics a1 (2 partitions, 2 replicas) and b1 (1, 1), records in both, the SmartModule
    ``contains@1``, and group ``ga`` with offsets :data:`COMMITTED` committed on a1."""
    await client.create_topic("a1", 2, 2, {"retention_ms": "3600000"})
    await client.create_topic("b1", 1, 1)
    producer = client.producer("a1", acks="all")
    for i in range(A1_RECORDS):
        await producer.send(b"a-%d" % i, partition=i % 2)
    await producer.close()
    producer = client.producer("b1", acks="all")
    for i in range(B1_RECORDS):
        await producer.send(b"b-%d" % i)
    await producer.close()
    await wait_committed(client, "a1")
    await wait_committed(client, "b1")
    wasm = build_c(os.path.join(EXAMPLES, "contains.c"))
    await client.admin.put_object("smartmodule", "contains@1", {
        "wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(), "size": len(wasm)})
    consumer = client.consumer("a1", group="ga", start=Offset.beginning(), auto_commit=False)
    got: list[Any] = []

    async def polled() -> bool:
        got.extend(await consumer.poll(0.2))
        return len(got) >= 1
    await wait_until(polled, WAIT_S, "group ga to hand out records")
    await consumer.commit(dict(COMMITTED))
    await consumer.close()


class Tables(HTMLParser):
    """``tables[table id][row key][column] = data-value if present, else the cell's text``;
    ``ids`` maps every element id to its text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self.ids: dict[str, str] = {}
        self._table: str | None = None
        self._row: str | None = None
        self._cell: tuple[str, str | None] | None = None
        self._text: list[str] = []
        self._open_ids: list[tuple[str, str, int]] = []  # (id, tag, text start)
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self._open_ids.append((a["id"] or "", tag, len(self._text)))
        if tag == "table" and a.get("id"):
            self._table = a["id"]
            self.tables[self._table] = {}
        elif tag == "tr" and self._table and "data-key" in a:
            self._row = a["data-key"]
            self.tables[self._table][self._row or ""] = {}
        elif tag == "td" and self._row is not None:
            self._cell = (a.get("data-col") or "", a.get("data-value"))
            self._cell_start = len(self._text)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None and self._table and self._row is not None:
            col, value = self._cell
            self.tables[self._table][self._row][col] = value if value is not None else "".join(
                self._text[self._cell_start:]).strip()
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None
        if self._open_ids and self._open_ids[-1][1] == tag:
            ident, _, start = self._open_ids.pop()
            self.ids[ident] = "".join(self._text[start:]).strip()

    def handle_data(self, data: str) -> None:
        self._text.append(data)
