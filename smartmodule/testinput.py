"""The input of ``kolk smartmodule test``: records from JSON lines or plain lines.

Pure: bytes in, :class:`TestRecord` values out, no files and no clock (the CLI reads the file
and fills in the time for records without a timestamp). Every refusal is a
:class:`TestInputError` whose message is one line naming the source, the line number and what
is wrong with it. docs/smartmodule-abi.md "Testing a module" describes both formats.

**jsonl** (the default for a ``.jsonl`` or ``.ndjson`` file): one record a line, a JSON object
with the optional fields ``key``, ``value`` (each a string, ``null`` or ``{"base64": "..."}`` /
``{"hex": "..."}`` for bytes that are not UTF-8), ``headers`` (an object of name to value, or a
list of ``[name, value]`` pairs when a name repeats) and ``timestamp`` (integer milliseconds).
A line that is a bare JSON string is a record with that value and nothing else; a bare
``null`` is a record with a null value. Blank lines are skipped. Anything else is refused: an
unknown field, a duplicate key, a number where bytes belong, ``NaN``.

**lines** (any other file): each non-empty line is a value, split into key and value at the
first ``key_separator`` when one is given (the format of ``kolk produce``).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

FORMATS = ("lines", "jsonl")
JSONL_SUFFIXES = (".jsonl", ".ndjson")

INPUT_BYTES_MAX = 16 << 20       # the whole input file
LINES_MAX = 1_000_000            # lines of the input, blank ones included
LINE_BYTES_MAX = 1 << 20         # one line, without its newline
RECORDS_MAX = 100_000            # records of the input (they go to the module as one batch)
HEADERS_PER_RECORD_MAX = 256
TIMESTAMP_MAX = (1 << 53) - 1    # ms; an integer every JSON reader keeps exactly

FIELDS = ("key", "value", "headers", "timestamp")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


class TestInputError(ValueError):
    """The test input is not as docs/smartmodule-abi.md says; ``str()`` is one line."""

    __test__ = False  # not a pytest class, whatever its name


@dataclass(frozen=True)
class TestRecord:
    """One input record. ``timestamp`` None: the input gave none (the caller picks one)."""

    __test__ = False

    key: bytes | None = None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    timestamp: int | None = None


def format_for(filename: str, given: str | None = None) -> str:
    """The input format: ``given`` if any, else jsonl for a .jsonl/.ndjson name, else lines."""
    if given is not None:
        if given not in FORMATS:
            raise TestInputError(f"input format {given!r} is not one of {', '.join(FORMATS)}")
        return given
    return "jsonl" if filename.lower().endswith(JSONL_SUFFIXES) else "lines"


def parse(data: bytes, fmt: str, source: str = "input", key_separator: str | None = None) -> list[TestRecord]:
    """The records of ``data`` in format ``fmt``; at least one, at most RECORDS_MAX."""
    if fmt not in FORMATS:
        raise TestInputError(f"input format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "jsonl" and key_separator is not None:
        raise TestInputError(f"{source}: --key-separator is for the lines format; a JSON line gives its own key")
    if key_separator == "":
        raise TestInputError(f"{source}: the key separator is empty")
    if len(data) > INPUT_BYTES_MAX:
        raise TestInputError(f"{source} is {len(data)} bytes, more than {INPUT_BYTES_MAX}: test with a smaller sample")
    records: list[TestRecord] = []
    sep = key_separator.encode() if key_separator is not None else None
    for n, line in enumerate(data.split(b"\n"), 1):
        if n > LINES_MAX:
            raise TestInputError(f"{source} line {n}: more than {LINES_MAX} lines: test with a smaller sample")
        line = line.rstrip(b"\r")
        if len(line) > LINE_BYTES_MAX:
            raise TestInputError(f"{source} line {n} is {len(line)} bytes, more than {LINE_BYTES_MAX}")
        if not line.strip(b" \t"):
            continue  # as kolk produce: blank lines are not records
        if len(records) == RECORDS_MAX:
            raise TestInputError(f"{source} line {n}: more than {RECORDS_MAX} records: test with a smaller sample")
        where = f"{source} line {n}"
        records.append(_json_record(line, where) if fmt == "jsonl" else _plain_record(line, sep, where))
    if not records:
        raise TestInputError(f"{source} has no records (no non-blank lines)")
    return records


def _plain_record(line: bytes, sep: bytes | None, where: str) -> TestRecord:
    if sep is None:
        return TestRecord(value=line)
    if sep not in line:
        raise TestInputError(f"{where} has no key separator {sep.decode()!r}")
    key, value = line.split(sep, 1)
    return TestRecord(key=key, value=value)


def _json_record(line: bytes, where: str) -> TestRecord:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TestInputError(f"{where} is not UTF-8 (byte {e.start}): write such bytes as "
                             '{"base64": "..."} or {"hex": "..."}') from None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except _Refused as e:
        raise TestInputError(f"{where}: {e}") from None
    except (json.JSONDecodeError, ValueError, RecursionError) as e:
        raise TestInputError(f"{where} is not JSON: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if doc is None or isinstance(doc, str):
        return TestRecord(value=_bytes(doc, where, "the value"))
    if not isinstance(doc, dict):
        raise TestInputError(f"{where}: a record is a JSON object or a string, not {_what(doc)}")
    unknown = [k for k in doc if k not in FIELDS]
    if unknown:
        raise TestInputError(f"{where}: unknown field {unknown[0]!r} (a record has {', '.join(FIELDS)})")
    return TestRecord(key=_bytes(doc.get("key"), where, "key"), value=_bytes(doc.get("value"), where, "value"),
                      headers=_headers(doc.get("headers"), where), timestamp=_timestamp(doc, where))


class _Refused(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise _Refused(f"duplicate key {k!r} (for a repeated header name, give headers as [[name, value], ...])")
        seen[k] = v
    return seen


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


def _what(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return {int: "a number", float: "a number", list: "an array", dict: "an object", str: "a string"}.get(
        type(v), type(v).__name__)


def _bytes(v: Any, where: str, field: str) -> bytes | None:
    """A string (UTF-8), null, {"base64": s} or {"hex": s}."""
    if v is None:
        return None
    if isinstance(v, str):
        try:
            return v.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate written as \\udXXX
            raise TestInputError(f"{where}: {field} has a lone surrogate escape; write such bytes as "
                                 '{"base64": "..."}') from None
    if isinstance(v, dict) and len(v) == 1:
        (form, text), = v.items()
        if form == "base64" and isinstance(text, str):
            try:
                return base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise TestInputError(f"{where}: {field} is not valid base64") from None
        if form == "hex" and isinstance(text, str):
            if not _HEX.fullmatch(text):
                raise TestInputError(f"{where}: {field} is not hex (an even number of 0-9 a-f)")
            return bytes.fromhex(text)
    raise TestInputError(f'{where}: {field} must be a string, null, {{"base64": "..."}} or {{"hex": "..."}}, '
                         f"not {_what(v)}")


def _headers(v: Any, where: str) -> tuple[tuple[str, bytes | None], ...]:
    if v is None:
        return ()
    if isinstance(v, dict):
        pairs = list(v.items())
    elif isinstance(v, list) and all(isinstance(p, list) and len(p) == 2 for p in v):
        pairs = [(p[0], p[1]) for p in v]
    else:
        raise TestInputError(f"{where}: headers must be an object of name to value, or a list of [name, value] "
                             f"pairs, not {_what(v)}")
    if len(pairs) > HEADERS_PER_RECORD_MAX:
        raise TestInputError(f"{where}: {len(pairs)} headers, more than {HEADERS_PER_RECORD_MAX}")
    out = []
    for name, value in pairs:
        if not isinstance(name, str):
            raise TestInputError(f"{where}: a header name must be a string, not {_what(name)}")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise TestInputError(f"{where}: header name {name!r} is not UTF-8") from None
        out.append((name, _bytes(value, where, f"header {name!r}")))
    return tuple(out)


def _timestamp(doc: dict[str, Any], where: str) -> int | None:
    ts = doc.get("timestamp")
    if ts is None:
        return None
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise TestInputError(f"{where}: timestamp must be an integer (milliseconds since 1970), not {_what(ts)}")
    if not 0 <= ts <= TIMESTAMP_MAX:
        raise TestInputError(f"{where}: timestamp {ts} is outside 0 to {TIMESTAMP_MAX}")
    return ts


def timestamps(records: list[TestRecord], now_ms: int) -> list[int]:
    """One timestamp per record: its own, or ``now_ms`` (as kolk produce stamps a record)."""
    return [now_ms if r.timestamp is None else r.timestamp for r in records]
