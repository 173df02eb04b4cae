"""Structured logs (issue 21, docs/operations.md "Logs"), in process: the text and JSON formats,
the node on every line (a library's too), the bounded ring of recent lines, the rate limit on
repeated lines, the transport's request lines, the SC's change lines. Real SC and SPU
processes: tests/test_logs_e2e.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import sys
from typing import Any, Iterator

import pytest

from kolk.client.admin import run
from kolk.metadata.objects import State
from kolk.observe import logs as L
from kolk.observe.log_limits import RepeatFilter, RepeatLimiter, repeat_note
from kolk.protocol import channel_server
from kolk.protocol.channel import SPU
from kolk.protocol.channel_client import ClientConnection
from kolk.protocol.wire import set_error
from kolk.sc.change_log import admin_change_line, controller_line

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(msg: str = "hello %s", args: tuple[Any, ...] = ("world",), name: str = "kolk.sc",
            level: int = logging.INFO, exc: Any = None, **extra: Any) -> logging.LogRecord:
    r = logging.LogRecord(name, level, __file__, 1, msg, args, exc)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


@pytest.fixture
def root_logging() -> Iterator[None]:
    """setup_logging changes the root logger: put it back as it was after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


# ---------------------------------------------------------------- formats


def test_a_json_line_is_one_object_with_the_fields_and_extras() -> None:
    r = _record("topic %s: %s", ("orders", "line one\nline two"), node="sc-1", req="3-17", peer="alice@10.0.0.5:4242",
                call="createTopic", code="denied", unrelated="not a field")
    line = L.JsonFormatter().format(r)
    assert "\n" not in line
    obj = json.loads(line)
    assert TS.match(obj.pop("ts"))
    assert obj == {"level": "INFO", "logger": "kolk.sc", "node": "sc-1", "msg": "topic orders: line one\nline two",
                   "req": "3-17", "peer": "alice@10.0.0.5:4242", "call": "createTopic", "code": "denied"}


def test_a_json_line_carries_an_exception_as_one_traceback_field() -> None:
    try:
        raise ValueError("bad thing")
    except ValueError:
        r = _record("failed", (), node="spu-2", level=logging.ERROR, exc=sys.exc_info())
    line = L.JsonFormatter().format(r)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["msg"] == "failed" and obj["level"] == "ERROR"
    assert obj["exc"].startswith("Traceback (most recent call last):") and obj["exc"].endswith("ValueError: bad thing")


def test_a_text_line_names_time_level_node_logger_and_the_request() -> None:
    line = L.TextFormatter().format(_record(node="spu-2", req="1-5", peer="anonymous@127.0.0.1:5000"))
    ts, rest = line.split(" ", 1)
    assert TS.match(ts)
    assert rest == "INFO spu-2 kolk.sc: hello world [req=1-5 peer=anonymous@127.0.0.1:5000]"
    assert L.TextFormatter().format(_record(node="sc-1")).endswith(" INFO sc-1 kolk.sc: hello world")


def test_an_unknown_format_or_level_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match=r"^log format 'xml' is not one of text, json$"):
        L.setup_logging("sc-1", "INFO", "xml")
    with pytest.raises(ValueError, match=r"^log level 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL$"):
        L.setup_logging("sc-1", "LOUD", "json")


def test_every_line_carries_the_node_a_librarys_too(root_logging: None) -> None:
    out = io.StringIO()
    L.setup_logging("sc-3", "INFO", "json", out)
    logging.getLogger("kolk.sc").info("ours")
    logging.getLogger("pysyncobj.tcp_connection").warning("theirs")  # a third-party logger, no extra given
    logging.getLogger("asyncio").error("and the loop's")
    logging.getLogger("kolk.sc").debug("below the level: not written")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(o["node"], o["logger"], o["msg"]) for o in lines] == [
        ("sc-3", "kolk.sc", "ours"), ("sc-3", "pysyncobj.tcp_connection", "theirs"),
        ("sc-3", "asyncio", "and the loop's")]
    assert L.recent_log_lines() == out.getvalue().splitlines()


def test_setting_up_again_replaces_the_handlers_it_installed(root_logging: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    L.setup_logging("spu-1", "INFO", "text", first)
    L.setup_logging("spu-1", "INFO", "json", second)
    logging.getLogger("kolk.spu").info("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["msg"] == "once"


# ---------------------------------------------------------------- the ring


def test_the_ring_keeps_the_newest_lines_within_its_line_bound() -> None:
    ring = L.LogRing(lines_max=10, bytes_max=1 << 20, line_bytes_max=1024)
    ring.setFormatter(logging.Formatter("%(message)s"))
    for i in range(25):
        ring.handle(_record("line %d", (i,)))
    assert ring.lines() == [f"line {i}" for i in range(15, 25)]


def test_the_ring_keeps_the_newest_lines_within_its_byte_bound() -> None:
    ring = L.LogRing(lines_max=1000, bytes_max=1000, line_bytes_max=1000)
    ring.setFormatter(logging.Formatter("%(message)s"))
    for i in range(100):
        ring.handle(_record("%03d" + "x" * 97, (i,)))  # 100 bytes each
    assert ring.size_bytes == 1000 == sum(len(x) for x in ring.lines())
    assert [x[:3] for x in ring.lines()] == [f"{i:03d}" for i in range(90, 100)]


def test_one_huge_line_is_cut_in_the_ring_and_the_bounds_are_checked() -> None:
    ring = L.LogRing(lines_max=5, bytes_max=4096, line_bytes_max=1024)
    ring.setFormatter(logging.Formatter("%(message)s"))
    ring.handle(_record("%s", ("y" * 100_000,)))
    (line,) = ring.lines()
    assert line.endswith("...(cut)") and len(line) <= 1024
    with pytest.raises(ValueError, match="bytes_max"):
        L.LogRing(lines_max=5, bytes_max=100, line_bytes_max=1024)


def test_the_default_ring_bounds_are_the_documented_ones() -> None:
    assert (L.RING_LINES_MAX, L.RING_BYTES_MAX) == (5_000, 2 << 20)
    ring = L.LogRing()
    ring.setFormatter(logging.Formatter("%(message)s"))
    for i in range(6_000):
        ring.handle(_record("%d " + "z" * 500, (i,)))  # ~3 MB offered
    lines = ring.lines()
    assert len(lines) <= L.RING_LINES_MAX and ring.size_bytes <= L.RING_BYTES_MAX
    assert lines[-1].startswith("5999 ")


# ---------------------------------------------------------------- repeated lines


def test_a_repeated_key_is_logged_first_then_once_a_window_with_its_count() -> None:
    clock = Clock()
    lim = RepeatLimiter(window_s=30, keys_max=8, clock=clock)
    assert lim.occurred(("10.0.0.1:9010", "refused")) == 0  # the first, at once
    for _ in range(5):
        clock.now += 1
        assert lim.occurred(("10.0.0.1:9010", "refused")) is None
    assert lim.occurred(("10.0.0.2:9010", "refused")) == 0  # another peer: its own key
    clock.now += 25  # 30 s after the first line
    assert lim.occurred(("10.0.0.1:9010", "refused")) == 5
    clock.now += 29.9
    assert lim.occurred(("10.0.0.1:9010", "refused")) is None
    clock.now += 100
    assert lim.occurred(("10.0.0.1:9010", "refused")) == 1
    assert repeat_note(5, 30) == " (5 more times in the last 30 s)"
    assert repeat_note(1, 30) == " (1 more time in the last 30 s)"
    assert repeat_note(0, 30) == ""


def test_the_limiter_forgets_the_least_recently_seen_key_beyond_its_bound() -> None:
    clock = Clock()
    lim = RepeatLimiter(window_s=30, keys_max=3, clock=clock)
    for k in "abc":
        assert lim.occurred(k) == 0
    assert lim.occurred("a") is None  # a is now the most recent
    assert lim.occurred("d") == 0  # b, the least recent, is forgotten
    assert len(lim) == 3
    assert lim.occurred("b") == 0  # so it is logged again at once
    assert lim.occurred("a") is None and lim.occurred("d") is None
    with pytest.raises(ValueError, match="keys_max >= 1"):
        RepeatLimiter(keys_max=0)


def test_the_filter_limits_marked_records_once_for_both_handlers(root_logging: None) -> None:
    out = io.StringIO()
    ring = L.setup_logging("spu-1", "INFO", "text", out)
    clock = Clock()
    for h in (logging.getLogger().handlers):
        for f in h.filters:
            if isinstance(f, RepeatFilter):
                f.limiter = RepeatLimiter(window_s=30, clock=clock)
    lg = logging.getLogger("kolk.follower")
    for _ in range(4):
        lg.warning("connection to %s failed: refused", "127.0.0.1:9013", extra={"repeat_key": ("127.0.0.1:9013", "r")})
    lg.info("an ordinary line")
    clock.now += 30
    lg.warning("connection to %s failed: refused", "127.0.0.1:9013", extra={"repeat_key": ("127.0.0.1:9013", "r")})
    lines = out.getvalue().splitlines()
    assert [x.split(": ", 1)[1] for x in lines] == [
        "connection to 127.0.0.1:9013 failed: refused", "an ordinary line",
        "connection to 127.0.0.1:9013 failed: refused (3 more times in the last 30 s)"]
    assert ring.lines() == lines  # the ring saw the same decision


# ---------------------------------------------------------------- request lines (the transport)


class _Slow:
    """A handler: ``offsets`` answers after ``delay_s``; topic "bad" answers a non-retriable error."""

    delay_s = 0.0

    async def offsets(self, req: Any, out: Any) -> None:
        if req.topic == "bad":
            set_error(out.result, "invalidArgument", "partition -1 does not exist\nsecond line")
            return
        await asyncio.sleep(self.delay_s)  # the slow handler under test
        out.result.ok = True


def test_request_lines_for_an_error_and_a_slow_answer(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(channel_server, "SLOW_REQUEST_S", 0.05)
    _Slow.delay_s = 0.06

    async def go() -> None:
        server = await channel_server.serve(SPU, lambda peer: _Slow(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        conn = await ClientConnection.open(SPU, f"127.0.0.1:{port}", 5)
        try:
            assert not (await conn.call("offsets", 5, topic="bad", partition=0)).result.ok
            assert (await conn.call("offsets", 5, topic="t", partition=0)).result.ok
            _Slow.delay_s = 0.0
            assert (await conn.call("offsets", 5, topic="t", partition=0)).result.ok  # quick: no line
        finally:
            conn.close()
            server.close()

    with caplog.at_level(logging.INFO, logger="kolk.channel"):
        run(go)
    lines = [r for r in caplog.records if getattr(r, "call", None) == "offsets"]
    assert [(r.levelname, r.code) for r in lines] == [("WARNING", "invalidArgument"), ("WARNING", "slow")]
    assert lines[0].getMessage() == "offsets answered invalidArgument: partition -1 does not exist; second line"
    assert re.fullmatch(r"offsets answered in 0\.\d s \(slow: 0 s or more\)", lines[1].getMessage())
    first, second = (r.req.split("-") for r in lines)
    assert first[0] == second[0] and int(second[1]) > int(first[1])  # one connection, its request ids
    assert all(r.peer.startswith("127.0.0.1:") and r.repeat_key for r in lines)


# ---------------------------------------------------------------- the SC's change lines


def test_change_lines_name_the_object_who_asked_and_the_version() -> None:
    assert admin_change_line("create", "topic:orders", "alice", "10.0.0.5", 17) == \
        "topic orders created by alice from 10.0.0.5 (metadata version 17)"
    assert admin_change_line("alter", "topic:orders partitions 4", "bob", "", 18) == \
        "topic orders grown to 4 partitions by bob (metadata version 18)"
    assert admin_change_line("put", "policy:active v3", "root", "::1", 19) == \
        "policy active v3 applied by root from ::1 (metadata version 19)"
    assert admin_change_line("delete", "smartmodule:upper", "anonymous", "127.0.0.1", 20) == \
        "smartmodule upper deleted by anonymous from 127.0.0.1 (metadata version 20)"
    assert admin_change_line("put", "smartmodule:upper@1.0.0", "alice", "", 21) == \
        "smartmodule upper@1.0.0 stored by alice (metadata version 21)"
    assert admin_change_line("delete", "policy:active", "root", "", 22) == \
        "policy active deleted by root (metadata version 22)"


def test_controller_lines_say_what_the_controller_changed() -> None:
    ok = {"ok": True}
    assert controller_line(State(), {"op": "set_spu_status", "id": 3, "alive": False}, ok, 9) == \
        "SPU 3 is down (no heartbeat in time), by the controller (metadata version 9)"
    assert controller_line(State(), {"op": "elect_leader", "partition": "t-0", "leader": 2, "isr": [2]}, ok, 10) == \
        "t-0: leader SPU 2 (was none), in-sync [2], by the controller (metadata version 10)"
    assert controller_line(State(), {"op": "reassign_partition"}, ok, 11) is None
