"""SmartModule ABI version 1, host side, as pure functions (docs/smartmodule-abi.md).

Encoding what the host writes into a module (the call input, the ``init`` parameters) and
checking what a module hands back (the output records) without trusting a byte of it. No
wasmtime here: the engine (engine.py) moves bytes in and out, these functions say what the
bytes mean.
"""

from __future__ import annotations

import struct
from typing import Mapping, NamedTuple

ABI_VERSION = 1
KINDS = ("filter", "map", "filter_map", "array_map", "aggregate")
STRICT_KINDS = ("filter", "map", "filter_map")  # one output at most per input record

CALL_HEAD = struct.Struct("<IIqq")  # record_count, flags, base_offset, first_timestamp
U32 = struct.Struct("<I")
# length, attributes, timestamp_delta, offset_delta, key_length
_REC = struct.Struct("<IBqIi")
_I32 = struct.Struct("<i")
RECORD_BYTES_MIN = 25  # attributes .. header_count with no key, value or headers

PARAMS_MAX = 64
PARAM_CHARS_MAX = 4096


class AbiError(Exception):
    """What a module handed back breaks the ABI; ``reason`` is one of the documented reasons."""

    def __init__(self, reason: str, message: str, record_index: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.record_index = record_index


class Output(NamedTuple):
    records: bytes  # a records section, checked
    record_count: int
    accumulator: bytes | None  # aggregate only
    max_offset_delta: int  # -1 when there are no records


def encode_call(kind: str, record_count: int, base_offset: int, first_timestamp: int, records: bytes,
                accumulator: bytes | None = None) -> bytes:
    head = CALL_HEAD.pack(record_count, 0, base_offset, first_timestamp)
    if kind == "aggregate":
        acc = accumulator or b""
        return b"".join((head, U32.pack(len(acc)), acc, records))
    return head + records


def encode_params(params: Mapping[str, str]) -> bytes:
    """The ``init`` input; refuses more than PARAMS_MAX or longer than PARAM_CHARS_MAX."""
    if len(params) > PARAMS_MAX:
        raise ValueError(f"{len(params)} parameters is more than {PARAMS_MAX}")
    parts = [U32.pack(len(params))]
    for k, v in params.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ValueError("parameter keys and values are text")
        try:
            kb, vb = k.encode(), v.encode()
        except UnicodeEncodeError:  # e.g. bytes a shell passed through as surrogate escapes
            name = k.encode("utf-8", "replace").decode()[:40]
            raise ValueError(f"parameter {name!r} is not valid UTF-8 text") from None
        if len(kb) > PARAM_CHARS_MAX or len(vb) > PARAM_CHARS_MAX:
            raise ValueError(f"parameter {k[:40]!r} is longer than {PARAM_CHARS_MAX} bytes (UTF-8)")
        parts += [U32.pack(len(kb)), kb, U32.pack(len(vb)), vb]
    return b"".join(parts)


def split_result(result: int) -> tuple[int, int]:
    """``(address, length)`` of a non-negative kind result."""
    return (result >> 32) & 0xFFFFFFFF, result & 0xFFFFFFFF


def check_output(kind: str, out: bytes, last_offset_delta: int, input_count: int | None = None,
                 shared_input: bool = False) -> Output:
    """Parse and check a kind call's output; raise AbiError("badOutput") naming the problem.

    ``shared_input``: the input's records may share offsets (an earlier stage of the chain was
    an ``array_map`` or ``aggregate``), so a filter or map after it keeps them non-decreasing
    rather than strictly increasing, and gives at most one output per input record
    (``input_count``)."""
    pos = 0
    n = len(out)
    accumulator = None
    if kind == "aggregate":
        if n < 4:
            raise AbiError("badOutput", f"aggregate output of {n} bytes has no accumulator length")
        (acc_len,) = U32.unpack_from(out, 0)
        if 4 + acc_len > n:
            raise AbiError("badOutput", f"accumulator of {acc_len} bytes runs past the output ({n} bytes)")
        accumulator = bytes(out[4:4 + acc_len])
        pos = 4 + acc_len
    if pos + 4 > n:
        raise AbiError("badOutput", f"output of {n} bytes has no record count")
    (count,) = U32.unpack_from(out, pos)
    pos += 4
    start = pos
    strict = kind in STRICT_KINDS and not shared_input
    if kind in STRICT_KINDS and input_count is not None and count > input_count:
        raise AbiError("badOutput", f"{count} output records from {input_count} input records: a {kind} gives at "
                                    "most one record per input record")
    prev = -1
    unpack_rec = _REC.unpack_from
    unpack_i32 = _I32.unpack_from
    unpack_u32 = U32.unpack_from
    for i in range(count):
        if pos + 4 + RECORD_BYTES_MIN > n:
            raise AbiError("badOutput", f"output record {i} of {count}: the output ends at byte {n}", i)
        length, attributes, _ts, delta, klen = unpack_rec(out, pos)
        end = pos + 4 + length
        if length < RECORD_BYTES_MIN or end > n:
            raise AbiError("badOutput", f"output record {i}: length {length} is below {RECORD_BYTES_MIN} or runs "
                                        f"past the output ({n} bytes)", i)
        if attributes != 0:
            raise AbiError("badOutput", f"output record {i}: attributes {attributes} (must be 0)", i)
        if delta > last_offset_delta:
            raise AbiError("badOutput", f"output record {i}: offset delta {delta} is past the input's last "
                                        f"({last_offset_delta}): a module cannot invent offsets", i)
        if delta < prev or (strict and delta == prev):
            order = "strictly increasing" if strict else "non-decreasing"
            raise AbiError("badOutput", f"output record {i}: offset delta {delta} after {prev}; a {kind} "
                                        f"keeps offsets {order}", i)
        prev = delta
        p = pos + 21
        if klen > 0:
            p += klen
        elif klen < -1:
            raise AbiError("badOutput", f"output record {i}: key length {klen}", i)
        if p + 8 > end:
            raise AbiError("badOutput", f"output record {i}: the value runs past the record", i)
        (vlen,) = unpack_i32(out, p)
        if vlen > 0:
            p += 4 + vlen
        elif vlen == -1 or vlen == 0:
            p += 4
        else:
            raise AbiError("badOutput", f"output record {i}: value length {vlen}", i)
        if p + 4 > end:
            raise AbiError("badOutput", f"output record {i}: no room for the header count", i)
        (headers,) = unpack_u32(out, p)
        p += 4
        for h in range(headers):
            if p + 4 > end:
                raise AbiError("badOutput", f"output record {i}: header {h} runs past the record", i)
            (hk,) = unpack_u32(out, p)
            name_at = p + 4
            p += 4 + hk
            p = _skip_value(out, p, end, i, f"header {h} value", unpack_i32)
            try:  # header names are UTF-8 (docs/format.md): decode_records refuses others
                bytes(out[name_at:name_at + hk]).decode("utf-8")
            except UnicodeDecodeError:
                raise AbiError("badOutput", f"output record {i}: header {h} name is not UTF-8", i) from None
        if p != end:
            raise AbiError("badOutput", f"output record {i}: its fields take {p - pos - 4} bytes, its length "
                                        f"says {length}", i)
        pos = end
    if pos != n:
        raise AbiError("badOutput", f"{n - pos} bytes left over after {count} output records")
    return Output(bytes(out[start:]), count, accumulator, prev)


def _skip_value(buf: bytes, p: int, end: int, i: int, what: str, unpack_i32: object) -> int:
    if p + 4 > end:
        raise AbiError("badOutput", f"output record {i}: the {what} length runs past the record", i)
    (vlen,) = unpack_i32(buf, p)  # type: ignore[operator]
    if vlen < -1:
        raise AbiError("badOutput", f"output record {i}: {what} length {vlen}", i)
    p += 4 + max(vlen, 0)
    if p > end:
        raise AbiError("badOutput", f"output record {i}: the {what} runs past the record", i)
    return p


def renumber(section: bytes, count: int) -> bytes:
    """The records section with offset deltas 0..count-1 (a checked section: lengths are
    trusted). The produce path uses it when a stage may give several records one offset."""
    buf = bytearray(section)
    pos = 0
    for i in range(count):
        (length,) = U32.unpack_from(buf, pos)
        U32.pack_into(buf, pos + 13, i)
        pos += 4 + length
    return bytes(buf)
