"""``kolk top``: a live terminal view of a running cluster (docs/operations.md, "kolk top").

Every ``--interval`` seconds it collects a :class:`~kolk.client.cluster_view.ClusterView` (the
same view the web console renders, over the public API only) and draws it with
core/cli/top_render.py. On a terminal it draws in place on the alternate screen with plain ANSI
escapes (cursor home, each line cleared to its end, the rest of the screen cleared), and
restores the screen on exit; Ctrl-C and SIGTERM end it with status 0. With ``--once``, or
when stdout is not a terminal, it prints plain text without escapes: one view with ``--once``,
else one view per interval with a blank line between. ``--json`` prints each view as one JSON
object per line instead.

Errors: no cluster reachable at the first view is one line and status 1 (a later failed
refresh keeps the last view on screen with the reason on top, or, without a terminal, one
line on stderr, and tries again at the next interval); a bad ``--interval`` is one line and
status 2 (the parser's).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from ..protocol.errors import KolkError
from . import args as A
from .admin import _sc_option, client_tls, resolve_sc

if TYPE_CHECKING:
    from ..client.cluster_view import ClusterView

# The view and its rendering are imported when `kolk top` runs, not by every `kolk` command.

COMMANDS = ("top",)
INTERVAL_MIN_S, INTERVAL_MAX_S, INTERVAL_DEFAULT_S = 0.5, 60.0, 2.0
INTERVAL = A.float_in(INTERVAL_MIN_S, INTERVAL_MAX_S)
CALL_TIMEOUT_S = 5.0  # each call to the cluster; a view's parts have their own bound (cluster_collect.py)
WIDTH_PLAIN = 80  # without a terminal

# ANSI escapes (ECMA-48 and xterm's alternate screen), nothing else.
ALT_SCREEN_ON, ALT_SCREEN_OFF = "\x1b[?1049h", "\x1b[?1049l"
CURSOR_HIDE, CURSOR_SHOW = "\x1b[?25l", "\x1b[?25h"
HOME, CLEAR_LINE_END, CLEAR_SCREEN_END = "\x1b[H", "\x1b[K", "\x1b[J"


def add_commands(sub: Any) -> None:
    p = sub.add_parser("top", help="a live terminal view of the cluster: rates, lag, ISR health")
    p.add_argument("--interval", type=INTERVAL, default=INTERVAL_DEFAULT_S, metavar="S",
                   help=f"seconds between views, {INTERVAL_MIN_S:g} to {INTERVAL_MAX_S:g} (default "
                        f"{INTERVAL_DEFAULT_S:g})")
    p.add_argument("--once", action="store_true", help="print one plain view and exit (records in per second, "
                                                       "which needs two views, shows '-')")
    p.add_argument("--topic", metavar="GLOB", help="only topics (and their partitions and groups) matching GLOB")
    _sc_option(p)


def dispatch(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args))
    except KolkError as e:
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"kolk top: {text}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the handlers were installed
        return 0


class _Screen:
    """Where views go: the terminal's alternate screen, redrawn in place, or plain text."""

    def __init__(self, out: TextIO, tty: bool, as_json: bool) -> None:
        self.out, self.tty, self.as_json = out, tty, as_json
        self.shown = 0

    def __enter__(self) -> "_Screen":
        if self.tty:
            self.out.write(ALT_SCREEN_ON + CURSOR_HIDE)
            self.out.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tty:
            self.out.write(CURSOR_SHOW + ALT_SCREEN_OFF)
            self.out.flush()

    def draw(self, view: "ClusterView", topic: str | None, problem: str | None = None) -> None:
        from .top_render import cut, fit_height, render, view_json

        if self.as_json:
            self.out.write(json.dumps(view_json(view), sort_keys=True) + "\n")
        elif self.tty:
            size = shutil.get_terminal_size()
            lines = render(view, width=size.columns, topic_glob=topic)
            if problem:
                shown = time.strftime("%H:%M:%S", time.gmtime(view.taken_at_ms / 1000))
                lines.insert(0, cut(f"! refresh failed, showing the view of {shown}: {problem}", size.columns))
            self.out.write(HOME + (CLEAR_LINE_END + "\n").join(fit_height(lines, size.lines - 1))
                           + CLEAR_LINE_END + CLEAR_SCREEN_END)
        else:
            self.out.write(("\n" if self.shown else "") + "\n".join(render(view, width=WIDTH_PLAIN,
                                                                           topic_glob=topic)) + "\n")
        self.out.flush()
        self.shown += 1


async def _until(stop: asyncio.Event, coro: Any) -> Any:
    """``coro``'s result, or None when ``stop`` is set first (``coro`` cancelled)."""
    task = asyncio.ensure_future(coro)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def _run(args: argparse.Namespace) -> int:
    from ..client.client import AsyncClient
    from ..client.cluster_view import collect_view

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = AsyncClient(resolve_sc(args.sc), tls=client_tls(args), timeout_s=CALL_TIMEOUT_S)
    tty = sys.stdout.isatty() and not args.once and not args.json
    try:
        due = loop.time() + args.interval  # views start every interval, however long one takes
        view = await _until(stop, collect_view(client, denials=False))  # no cluster: KolkError, status 1
        if view is None:
            return 0
        with _Screen(sys.stdout, tty, args.json) as screen:
            problem: str | None = None
            show = True  # without a terminal, a failed refresh prints no view again
            while True:
                if show:
                    screen.draw(view, args.topic, problem)
                if args.once:
                    return 0
                if await _until(stop, _sleep(due - loop.time())) is None:
                    return 0
                due = loop.time() + args.interval
                try:
                    fresh = await _until(stop, collect_view(client, view, denials=False))
                except KolkError as e:
                    problem = str(e).splitlines()[0] if str(e) else type(e).__name__
                    show = tty
                    if not tty:
                        print(f"kolk top: {problem}", file=sys.stderr, flush=True)
                    continue
                if fresh is None:
                    return 0
                view, problem, show = fresh, None, True
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await client.close()


async def _sleep(seconds: float) -> bool:
    await asyncio.sleep(max(seconds, 0.0))  # until the next view is due, as --interval asks
    return True
