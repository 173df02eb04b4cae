"""The console's request handler, and :func:`start_console`, which the SC calls.

A request is routed (core/console/routes.py: 404, 400 for a bad name), then a page about one
topic or group is checked against the policy (403, audited, before the view is looked at: a
refusal says nothing of whether the topic exists), then the newest view is cut down to what the
viewer may see (core/console/access.py) and rendered as HTML or JSON. Cutting and rendering
run in a worker thread (``asyncio.to_thread``): they read only frozen values (the view, the
policy in force), and a page of 10,000 partitions must not hold the SC's event loop.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from ..client.cluster_view import ClusterView
from ..observe.http import HttpListener, HttpRequest, HttpResponse, serve_http
from ..security.tls import ANONYMOUS, TlsConfig
from . import api_json, pages
from . import layout as L
from . import routes as R
from .access import Decide, Gate, for_viewer, group_resource, may_see_group, may_see_topic, topic_resource, visible
from .collector import ViewCollector

log = logging.getLogger("kolk.console")

HTML = "text/html; charset=utf-8"
JSON = "application/json"
RETRY_AFTER_S = 2  # a 503 (no view yet): about one collection period
# Renders running at once. Rendering is pure Python in a worker thread, which still holds the
# GIL: 32 clients fetching a 1,000-partition topic page at once (six renders in the pool) made
# the SC's loop wait up to 1 s (admin calls p50 0.4 ms -> 129 ms). One at a time leaves the loop
# its share; the other requests wait their turn (within the listener's 30 s answer limit).
RENDERS_AT_ONCE = 1
TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 503: "Unavailable"}
_RENDER_HTML = {R.OVERVIEW: pages.overview, R.TOPICS: pages.topics, R.SMARTMODULES: pages.smartmodules,
                R.GROUPS: pages.groups, R.POLICY: pages.policy}
_RENDER_JSON = {R.OVERVIEW: api_json.overview, R.TOPICS: api_json.topics, R.SMARTMODULES: api_json.smartmodules,
                R.GROUPS: api_json.groups, R.POLICY: api_json.policy}


def error_response(status: int, line: str, api: bool, viewer: str) -> HttpResponse:
    retry = (("Retry-After", str(RETRY_AFTER_S)),) if status == 503 else ()
    if api:
        return HttpResponse(status, api_json.error(line), JSON, (("Cache-Control", "no-store"),) + retry)
    return HttpResponse(status, L.message_page(status, TITLES.get(status, "Error"), line, viewer).encode(), HTML,
                        L.HTML_HEADERS + retry)


def render(view: ClusterView, r: R.Route, viewer: str, address: str, decide: Decide) -> HttpResponse:
    """The answer to ``r`` from ``view`` for ``viewer`` (pure; run in a worker thread)."""
    shown = visible(view, viewer, for_viewer(decide, viewer, address))
    if r.page in (R.TOPIC, R.GROUP):
        found: Any
        if r.page == R.TOPIC:
            found = next((t for t in shown.view.topics if t.name == r.name), None)
            what = f"topic {r.name}"
        else:
            found = next((g for g in shown.view.groups if g.name == r.name), None)
            what = f"consumer group {r.name}"
        if found is None:
            return error_response(404, f"no {what} in the cluster (as of {L.utc_time(view.taken_at_ms)})", r.api,
                                  viewer)
        if r.api:
            body = (api_json.topic if r.page == R.TOPIC else api_json.group)(shown, found)
            return HttpResponse(200, api_json.encode(body), JSON, (("Cache-Control", "no-store"),))
        html = (pages.topic if r.page == R.TOPIC else pages.group)(shown, found)
        return HttpResponse(200, html.encode(), HTML, L.HTML_HEADERS)
    if r.api:
        return HttpResponse(200, api_json.encode(_RENDER_JSON[r.page](shown)), JSON, (("Cache-Control", "no-store"),))
    return HttpResponse(200, _RENDER_HTML[r.page](shown).encode(), HTML, L.HTML_HEADERS)


@dataclass
class Console:
    """Serves the console's pages from ``collector``'s newest view, as ``gate`` allows."""

    collector: ViewCollector
    gate: Gate
    listener: HttpListener | None = None
    _rendering: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(RENDERS_AT_ONCE))

    @property
    def address(self) -> str:
        assert self.listener is not None
        return self.listener.address

    async def handle(self, req: HttpRequest) -> HttpResponse:
        viewer = req.identity or ANONYMOUS
        address = req.peer.rsplit(":", 1)[0].strip("[]")
        r = R.route(req.path)
        if isinstance(r, R.RouteError):
            return error_response(r.status, r.message, r.api, viewer)
        refused = self._refused(r, viewer, address)
        if refused is not None:
            return error_response(403, refused, r.api, viewer)
        view = await self.collector.current()
        if view is None:
            why = self.collector.error or "the first collection is still running"
            return error_response(503, f"no view of the cluster yet: {why}; try again in a few seconds", r.api,
                                  viewer)
        async with self._rendering:  # one render at a time: see RENDERS_AT_ONCE
            return await asyncio.to_thread(render, view, r, viewer, address, self.gate.decider())

    def _refused(self, r: R.Route, viewer: str, address: str) -> str | None:
        """The audited refusal of a page about one topic or group the viewer may not see."""
        if r.name is None:
            return None
        allowed = for_viewer(self.gate.decider(), viewer, address)
        if r.page == R.TOPIC and not may_see_topic(allowed, r.name):
            return self.gate.check(viewer, address, "describe", topic_resource(r.name))
        if r.page == R.GROUP and not may_see_group(allowed, r.name):
            return self.gate.check(viewer, address, "describe", group_resource(r.name))
        return None

    async def close(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        await self.collector.close()


async def start_console(address: str, *, collector: ViewCollector, gate: Gate, tls: TlsConfig | None,
                        name: str) -> Console:
    """Serve the console on ``address`` (``host:port``; port 0: any free one). With ``tls`` (the
    node's own files) every visitor needs a client certificate signed by the cluster CA."""
    console = Console(collector, gate)
    console.listener = await serve_http(address, console.handle, tls=tls, name=name)
    log.info("%s: the web console is at %s://%s/", name, "https" if tls is not None else "http",
             console.listener.address)
    return console
