"""The human-readable end of a fault-harness run (DESIGN.md §9): a latency plot as a
hand-written SVG, and the results as ``results.json`` plus a short ``summary.txt``.

Independent of the history module: :func:`latency_svg` takes plain records
``(time_s, latency_ms, f, outcome)`` (tuples or objects with those attributes) and fault
windows ``(start_s, end_s, label)``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable, NamedTuple
from xml.sax.saxutils import escape, quoteattr

MAX_DOTS = 20_000
LATENCY_FLOOR_MS = 0.01  # a latency of 0 (or less) is drawn at this floor of the log scale
OUTCOME_COLORS = {"ok": "#2ca02c", "fail": "#d62728", "info": "#ff7f0e"}
OTHER_COLOR = "#7f7f7f"
FAULT_COLORS = ("#1f77b4", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#d62728")
MARGIN = {"left": 72, "right": 20, "top": 56, "bottom": 48}


class OpPoint(NamedTuple):
    time_s: float
    latency_ms: float
    f: str
    outcome: str


class FaultWindow(NamedTuple):
    start_s: float
    end_s: float | None
    label: str


def _op(op: Any) -> OpPoint:
    if hasattr(op, "time_s"):
        return OpPoint(op.time_s, op.latency_ms, op.f, op.outcome)
    t, lat, f, outcome = tuple(op)[:4]
    return OpPoint(t, lat, f, outcome)


def _window(w: Any) -> FaultWindow:
    """A fault window from ``(start_s, end_s, label)`` or an object with start_s, end_s and
    label, or kind and target (e.g. a ``jepsen.nemesis.Fault``: "kill spu:leader")."""
    if hasattr(w, "start_s"):
        label = getattr(w, "label", None) or " ".join(filter(None, (getattr(w, "kind", "fault"),
                                                                        getattr(w, "target", ""))))
        s, e = w.start_s, w.end_s
    else:
        s, e, label = tuple(w)[:3]
    return FaultWindow(float(s), None if e is None else float(e), str(label))


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _even(items: list[Any], k: int) -> list[Any]:
    """``k`` items spread evenly over ``items`` (all of them when there are at most ``k``)."""
    n = len(items)
    return list(items) if n <= k else [items[i * n // k] for i in range(k)]


def downsample(points: list[OpPoint], max_dots: int = MAX_DOTS) -> list[OpPoint]:
    """At most ``max_dots`` points, sorted by time. Beyond the limit, ok and other outcomes are
    each thinned evenly over time; failures and infos (the rare, interesting ones) keep at least
    half of the budget, or all of their points if they need less."""
    points = sorted(points, key=lambda p: p.time_s)
    if len(points) <= max_dots:
        return points
    ok = [p for p in points if p.outcome == "ok"]
    rare = [p for p in points if p.outcome != "ok"]
    k_rare = min(len(rare), max(max_dots // 2, max_dots - len(ok)))
    return sorted(_even(rare, k_rare) + _even(ok, max_dots - k_rare), key=lambda p: p.time_s)


def _nice_step(span: float, ticks: int = 8) -> float:
    raw = max(span, 1e-9) / ticks
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _fmt_s(x: float) -> str:
    return f"{x:g}" if abs(x - round(x)) > 1e-9 else str(int(round(x)))


def _fmt_ms(ms: float) -> str:
    if ms >= 1000:
        return f"{ms / 1000:g} s"
    return f"{ms:g} ms"


def _marker(f: str, x: float, y: float, color: str, outcome: str) -> str:
    cls = quoteattr(f"op {f} {outcome}")
    if f == "send":
        return f'<circle class={cls} cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{color}"/>'
    if f == "poll":
        return f'<rect class={cls} x="{x - 2.5:.1f}" y="{y - 2.5:.1f}" width="5" height="5" fill="{color}"/>'
    return (f'<polygon class={cls} points="{x:.1f},{y - 3:.1f} {x + 3:.1f},{y + 2.5:.1f} '
            f'{x - 3:.1f},{y + 2.5:.1f}" fill="{color}"/>')


def latency_svg(ops: Iterable[Any], faults: Iterable[Any], path: str, width: int = 1000, height: int = 400,
                *, max_dots: int = MAX_DOTS, title: str = "Operation latency") -> dict[str, Any]:
    """Write an SVG of latency over time to ``path``; return counts of what was drawn.

    x: seconds since start; y: latency in ms on a log scale. One marker per completed
    operation (records whose time or latency is missing or not finite are skipped): color by
    outcome (ok green, fail red, info orange), shape by function (send circle, poll square,
    anything else triangle). Each fault window is a translucent rectangle labelled with its
    kind (an open window, end None, runs to the end of the plot). Markers live in
    ``<g id="ops">``, fault rectangles in ``<g id="faults">``."""
    points = [p for p in map(_op, ops) if _finite(p.time_s) and _finite(p.latency_ms)]
    total = len(points)
    points = downsample(points, max_dots)
    windows = [_window(w) for w in faults]

    left, right, top, bottom = MARGIN["left"], width - MARGIN["right"], MARGIN["top"], height - MARGIN["bottom"]
    t_end = max([p.time_s for p in points] + [w.end_s or w.start_s for w in windows] + [1e-9])
    x_step = _nice_step(t_end)
    x_max = math.ceil(t_end / x_step - 1e-9) * x_step

    def sx(t: float) -> float:
        return left + (right - left) * min(max(t, 0.0), x_max) / x_max

    lats = [max(p.latency_ms, LATENCY_FLOOR_MS) for p in points]
    lo = math.floor(math.log10(min(lats))) if lats else 0
    hi = math.ceil(math.log10(max(lats))) if lats else 3
    hi = max(hi, lo + 1)

    def sy(ms: float) -> float:
        frac = (math.log10(max(ms, LATENCY_FLOOR_MS)) - lo) / (hi - lo)
        return bottom - (bottom - top) * frac

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="14" font-weight="bold">{escape(title)}</text>']
    # Legend, top right: outcome colors, then function shapes.
    lx = right - 330
    for i, (name, color) in enumerate(OUTCOME_COLORS.items()):
        out.append(f'<circle cx="{lx + i * 55:.0f}" cy="14" r="4" fill="{color}"/>'
                   f'<text x="{lx + i * 55 + 7:.0f}" y="18">{name}</text>')
    out.append(f'<circle cx="{lx + 175}" cy="14" r="3" fill="#444"/><text x="{lx + 182}" y="18">send</text>')
    out.append(f'<rect x="{lx + 222}" y="11" width="6" height="6" fill="#444"/><text x="{lx + 232}" y="18">poll</text>')
    out.append(f'<polygon points="{lx + 275},10 {lx + 279},17 {lx + 271},17" fill="#444"/>'
               f'<text x="{lx + 284}" y="18">other</text>')

    colors: dict[str, str] = {}
    out.append('<g id="faults">')
    labels = []
    for i, w in enumerate(windows):
        kind = w.label.split()[0] if w.label.strip() else "fault"
        color = colors.setdefault(kind, FAULT_COLORS[len(colors) % len(FAULT_COLORS)])
        x0, x1 = sx(w.start_s), sx(x_max if w.end_s is None else w.end_s)
        end = "…" if w.end_s is None else f"{w.end_s:.1f}"
        out.append(f'<rect class="fault" x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 1.0):.1f}" '
                   f'height="{bottom - top}" fill="{color}" fill-opacity="0.15" stroke="{color}" '
                   f'stroke-opacity="0.4"><title>{escape(w.label)} {w.start_s:.1f}–{end} s</title></rect>')
        labels.append(f'<text x="{x0 + 2:.1f}" y="{top - 4 - 11 * (i % 3)}" fill="{color}" '
                      f'font-size="10">{escape(w.label)}</text>')
    out.append("</g>")
    out.append('<g id="fault-labels">' + "".join(labels) + "</g>")

    # Axes, grid and ticks.
    out.append('<g id="axes" stroke="#000">'
               f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"/>'
               f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}"/></g>')
    ticks = ['<g id="ticks">']
    n_x = int(round(x_max / x_step))
    for k in range(n_x + 1):
        t = k * x_step
        x = sx(t)
        ticks.append(f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" stroke="#000"/>'
                     f'<text x="{x:.1f}" y="{bottom + 17}" text-anchor="middle">{_fmt_s(t)}</text>')
    for d in range(lo, hi + 1):
        ms = 10.0 ** d
        y = sy(ms)
        ticks.append(f'<line x1="{left - 5}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<line x1="{left - 5}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#000"/>'
                     f'<text x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">{_fmt_ms(ms)}</text>')
    ticks.append("</g>")
    out += ticks
    out.append(f'<text x="{(left + right) / 2:.0f}" y="{height - 10}" text-anchor="middle">'
               'time since start (s)</text>')
    out.append(f'<text transform="translate(16 {(top + bottom) / 2:.0f}) rotate(-90)" '
               'text-anchor="middle">latency (ms, log scale)</text>')

    out.append('<g id="ops" fill-opacity="0.7">')
    for p in points:
        color = OUTCOME_COLORS.get(p.outcome, OTHER_COLOR)
        out.append(_marker(str(p.f), sx(p.time_s), sy(p.latency_ms), color, str(p.outcome)))
    out.append("</g>")
    if total > len(points):
        out.append(f'<text x="{right}" y="{height - 10}" text-anchor="end" fill="#666">'
                   f'{len(points)} of {total} operations drawn</text>')
    out.append("</svg>")

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")
    return {"path": path, "ops": total, "dots": len(points), "faults": len(windows)}


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return dataclasses.asdict(x)
    if isinstance(x, (set, frozenset)):
        return sorted(x, key=repr)
    if isinstance(x, bytes):
        return x.decode("utf-8", "backslashreplace")
    return repr(x)


def _brief(value: Any, limit: int = 100) -> str:
    if isinstance(value, dict):
        scalars = [(k, v) for k, v in value.items() if isinstance(v, (bool, int, float, str)) or v is None]
        head = [f"{k}={v}" for k, v in scalars if k == "valid"]
        rest = [f"{k}={v}" for k, v in scalars if k != "valid"][:6]
        text = ", ".join(head + rest) or f"{len(value)} entries"
    elif isinstance(value, (list, tuple)):
        text = f"{len(value)} items"
    else:
        text = str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def summary_text(results: dict[str, Any]) -> str:
    """A few lines a person reads first: the verdict, then one line per result entry."""
    lines = ["Kolk fault-injection run"]
    if "valid" in results:
        lines.append(f"valid: {results['valid']}")
    lines += [f"{k}: {_brief(v)}" for k, v in results.items() if k != "valid"]
    return "\n".join(lines) + "\n"


def write_results(dir: str, results: dict[str, Any]) -> dict[str, str]:
    """Write ``results.json`` (indented) and ``summary.txt`` into ``dir``; return their paths."""
    os.makedirs(dir, exist_ok=True)
    paths = {"json": os.path.join(dir, "results.json"), "summary": os.path.join(dir, "summary.txt")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, default=_jsonable, ensure_ascii=False)
        f.write("\n")
    with open(paths["summary"], "w", encoding="utf-8") as f:
        f.write(summary_text(results))
    return paths
