"""A node's metrics listener (``--metrics HOST:PORT``): ``/metrics`` and ``/health`` over
core/observe/http.py (docs/metrics.md).

* ``GET /metrics``: the registry in the Prometheus text format, rendered by
  ``prometheus_client.generate_latest`` in a worker thread (a 1,000-partition SPU renders for
  milliseconds: never on the node's loop), one render at a time: scrapes that arrive during
  a render wait for the next one. A render that took longer than :data:`REUSE_FROM_S` is
  the answer to every scrape for 4 times its own length after it (:data:`RENDER_SHARE_MAX`):
  a render holds the GIL, so back-to-back scrapes of a 2,000-partition SPU (~200 ms each)
  would otherwise take about all of a core from the serving loop (measured: produce p50
  0.8 -> 7 ms, p99 2 -> 76 ms); so bounded they take at most a fifth of the time.
* ``GET /health``: 200 ``ok`` when the node is doing its job, else 503 and one line saying why
  (``health`` is the node's own check: cheap, synchronous, no I/O).
* Anything else: 404; a method other than GET or HEAD: 405 (the listener's).
"""

from __future__ import annotations

import asyncio
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..security.tls import TlsConfig
from .http import HttpLimits, HttpListener, HttpRequest, HttpResponse, serve_http, text
from .process_metrics import register_process_metrics

Health = Callable[[], "tuple[bool, str]"]
PATHS = ("/metrics", "/health")
REUSE_FROM_S = 0.02  # a cheaper render (a small node; every test's) is never reused
RENDER_SHARE_MAX = 0.2  # the most of the time back-to-back scrapes spend rendering


class MetricsHandler:
    """Answers one request of the metrics listener (the pure part of it: no socket)."""

    def __init__(self, registry: CollectorRegistry, health: Health) -> None:
        self.registry = registry
        self.health = health
        self._rendering = asyncio.Lock()
        self._body = b""
        self._reuse_until = 0.0  # loop time until which _body answers /metrics without a render

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/metrics":
            async with self._rendering:
                loop = asyncio.get_running_loop()
                started = loop.time()
                if started >= self._reuse_until:
                    self._body = await asyncio.to_thread(generate_latest, self.registry)
                    ended = loop.time()
                    took = ended - started
                    self._reuse_until = ended + took * (1 / RENDER_SHARE_MAX - 1) if took > REUSE_FROM_S else 0.0
                body = self._body
            return HttpResponse(200, body, CONTENT_TYPE_LATEST, (("Cache-Control", "no-store"),))
        if request.path == "/health":
            ok, reason = self.health()
            return text(200, "ok") if ok else text(503, reason or "not healthy")
        return text(404, f"no such path: {request.path[:200]} (this listener serves {' and '.join(PATHS)})")


async def start_metrics_listener(address: str, registry: CollectorRegistry, tls: TlsConfig | None,
                                 health: Health, name: str, limits: HttpLimits = HttpLimits()) -> HttpListener:
    """Serve ``registry`` and ``health`` on ``address`` (port 0: any free one; the bound
    address is the listener's ``address``). With ``tls``, clients need a certificate of the
    cluster CA, as on the node's own listener."""
    return await serve_http(address, MetricsHandler(registry, health), tls=tls, name=f"{name} metrics",
                            limits=limits)


class NodeMetrics:
    """A node's observability parts in one place: its registry gets the process metrics and
    the event-loop lag histogram; :meth:`start` runs the lag monitor and, given an address,
    the metrics listener; :meth:`stop` stops both. The SC and the SPU each hold one."""

    def __init__(self, registry: CollectorRegistry, version: str) -> None:
        self.registry = registry
        self._loop_lag = register_process_metrics(registry, version)
        self.listener: HttpListener | None = None

    @property
    def address(self) -> str | None:
        """The bound metrics address, None while no listener runs."""
        return self.listener.address if self.listener is not None else None

    async def start(self, address: str | None, tls: TlsConfig | None, health: Health, name: str) -> None:
        """OSError when ``address`` cannot be listened on (the node says so and exits)."""
        self._loop_lag.start()
        if address is not None:
            self.listener = await start_metrics_listener(address, self.registry, tls, health, name)

    async def stop(self) -> None:
        self._loop_lag.stop()
        if self.listener is not None:
            listener, self.listener = self.listener, None
            await listener.close()
