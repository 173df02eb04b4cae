"""The frame every console page shares: head, navigation, styles, the refresh script, and the
small HTML helpers (cells, tables, numbers), all with ``html.escape``; no template engine.

Pages work without JavaScript: every table is server-rendered HTML. The one inline script
(:data:`REFRESH_SCRIPT`) fetches the same page every :data:`REFRESH_S` seconds while the tab is
visible and swaps its ``<main>`` in place; with JavaScript off the page is reloaded by hand.
The answer's Content-Security-Policy allows exactly that script and the inline style, by hash,
and nothing else (no other script, no frames, no outside requests).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
from html import escape
from typing import Iterable, Sequence
from urllib.parse import quote

REFRESH_S = 3
REFRESH_HEADER = "X-Kolk-Refresh"  # sent by the refresh script, so the log can tell it from a visit

STYLE = """
:root{--fg:#1d2330;--muted:#5f6b7a;--line:#dde3ea;--bg:#f6f8fa;--card:#fff;--accent:#0b6e99;
--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;
color:var(--fg);background:var(--bg)}
header{display:flex;gap:1.5rem;align-items:center;padding:.6rem 1.5rem;background:#102a43;color:#fff}
header a{color:#d9e2ec;text-decoration:none}header a.brand{font-weight:700;font-size:1.1rem;color:#fff}
header nav{display:flex;gap:1rem;flex:1}header nav a[aria-current=page]{color:#fff;border-bottom:2px solid #61dafb}
header .who{color:#9fb3c8;font-size:.9rem}
main{padding:1rem 1.5rem 2rem;max-width:1200px}h1{font-size:1.4rem;margin:.3rem 0 1rem}
h2{font-size:1.1rem;margin:1.5rem 0 .5rem}
.cards{display:flex;flex-wrap:wrap;gap:.75rem}.card{background:var(--card);border:1px solid var(--line);
border-radius:6px;padding:.6rem 1rem;min-width:9rem}.card .v{font-size:1.5rem;font-weight:600}
.card .k{color:var(--muted);font-size:.85rem}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);min-width:30rem}
th,td{padding:.35rem .75rem;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:#eef2f6;font-weight:600}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}td.num{white-space:nowrap}
.ok{color:var(--ok)}.under-replicated,.warn{color:var(--warn);font-weight:600}.offline,.bad{color:var(--bad);
font-weight:600}.muted{color:var(--muted)}.badge{font-size:.75rem;border:1px solid var(--line);
border-radius:4px;padding:0 .3rem;color:var(--muted);margin-left:.4rem}
pre{background:var(--card);border:1px solid var(--line);padding:.75rem;overflow:auto;max-height:30rem}
.errors li{color:var(--bad)}footer{color:var(--muted);font-size:.85rem;margin-top:1.5rem}
dl{display:grid;grid-template-columns:max-content auto;gap:.2rem 1rem}dt{color:var(--muted)}dd{margin:0}
"""

REFRESH_SCRIPT = """
(function(){
  var every = %d * 1000;
  document.documentElement.setAttribute("data-refreshing", "on");
  async function refresh(){
    if (document.hidden) return;
    try {
      var r = await fetch(location.href, {headers: {"%s": "1"}, cache: "no-store"});
      if (!r.ok) return;
      var doc = new DOMParser().parseFromString(await r.text(), "text/html");
      var next = doc.querySelector("main");
      if (next) document.querySelector("main").replaceWith(next);
    } catch (e) { /* the next round tries again */ }
  }
  setInterval(refresh, every);
})();
""" % (REFRESH_S, REFRESH_HEADER)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src {_csp_hash(STYLE)}; script-src {_csp_hash(REFRESH_SCRIPT)}; "
                           "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")
HTML_HEADERS = (("Content-Security-Policy", CONTENT_SECURITY_POLICY), ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"))

NAV = (("/", "Overview", "overview"), ("/topics", "Topics", "topics"), ("/groups", "Consumer groups", "groups"),
       ("/smartmodules", "SmartModules", "smartmodules"), ("/policy", "Policy", "policy"))
NONE = "\u2014"  # what a cell shows for a value that is not known


def page(title: str, section: str, viewer: str, body: str, taken_at_ms: int | None) -> str:
    """A whole HTML document: the frame around ``body`` (already escaped HTML)."""
    links = "".join(f'<a href="{href}"{" aria-current=page" if key == section else ""}>{escape(label)}</a>'
                    for href, label, key in NAV)
    taken = (f'<footer id="taken" data-ms="{taken_at_ms}">Collected {escape(utc_time(taken_at_ms))}; refreshed '
             f'every {REFRESH_S} s while JavaScript is on<noscript> (it is off: reload the page to refresh)</noscript>'
             '</footer>'
             if taken_at_ms is not None else "")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>{escape(title)} \u00b7 Kolk</title><style>{STYLE}</style></head><body>'
            f'<header><a class="brand" href="/">Kolk</a><nav>{links}</nav>'
            f'<span class="who" id="viewer">{escape(viewer)}</span></header>'
            f'<main><h1>{escape(title)}</h1>{body}{taken}</main><script>{REFRESH_SCRIPT}</script></body></html>')


def utc_time(ms: int | None) -> str:
    if ms is None:
        return NONE
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def href(prefix: str, name: str) -> str:
    return f"{prefix}/{quote(name, safe='')}"


def link(prefix: str, name: str) -> str:
    return f'<a href="{escape(href(prefix, name))}">{escape(name)}</a>'


def human_bytes(n: int | None) -> str:
    if n is None:
        return NONE
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # not reached


class Cell:
    """One table cell: ``html`` (escaped already), its column key, and the raw value for
    machines (``data-value``) when the text is formatted for people."""

    __slots__ = ("html", "col", "value", "cls")

    def __init__(self, html: str, col: str, value: object = None, cls: str = "") -> None:
        self.html, self.col, self.value, self.cls = html, col, value, cls


def text(value: object, col: str, cls: str = "") -> Cell:
    return Cell(escape(NONE if value is None else str(value)), col, None, cls)


def num(value: int | None, col: str) -> Cell:
    return Cell(NONE if value is None else f"{value:,}", col, value, "num")


def size(value: int | None, col: str) -> Cell:
    return Cell(human_bytes(value), col, value, "num")


def rate(value: float | None, col: str) -> Cell:
    return Cell(NONE if value is None else f"{value:,.1f}/s", col, None if value is None else round(value, 3), "num")


def ids(values: Sequence[int] | None, col: str) -> Cell:
    return Cell(NONE if values is None else escape(", ".join(str(v) for v in values)), col,
                None if values is None else ",".join(str(v) for v in values))


def table(table_id: str, headers: Sequence[tuple[str, str]], rows: Iterable[tuple[str, Sequence[Cell]]],
          empty: str) -> str:
    """``headers``: (column key, label); ``rows``: (the row's key for ``data-key``, its cells)."""
    head = "".join(f'<th scope="col" data-col="{k}"{" class=num" if k in _NUMERIC else ""}>{escape(label)}</th>'
                   for k, label in headers)
    body = []
    for key, cells in rows:
        tds = "".join(
            f'<td data-col="{c.col}"' + (f' class="{c.cls}"' if c.cls else "")
            + (f' data-value="{escape(str(c.value))}"' if c.value is not None else "") + f">{c.html}</td>"
            for c in cells)
        body.append(f'<tr data-key="{escape(key)}">{tds}</tr>')
    if not body:
        return f'<p class="muted" id="{table_id}-empty">{escape(empty)}</p>'
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


_NUMERIC = {"partition", "partitions", "rf", "size", "records", "rate", "hw", "leo", "start", "lag", "members", "committed",
            "replicas", "leaders", "fuel"}


def cards(items: Sequence[tuple[str, str, object, str]]) -> str:
    """Summary cards: (key, label, value, css class)."""
    out = []
    for key, label, value, cls in items:
        shown = NONE if value is None else (f"{value:,}" if isinstance(value, int) else str(value))
        out.append(f'<div class="card" id="card-{key}"><div class="v {cls}">{escape(shown)}</div>'
                   f'<div class="k">{escape(label)}</div></div>')
    return f'<div class="cards">{"".join(out)}</div>'


def message_page(status: int, title: str, line: str, viewer: str) -> str:
    """An error page (404, 400, 403, 503): the status, and the one line saying why."""
    body = f'<p id="error" data-status="{status}">{escape(line)}</p><p><a href="/">Back to the overview</a></p>'
    return page(f"{status} {title}", "", viewer, body, None)
