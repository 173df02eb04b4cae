"""Amplified requests, made by hand, and the process that sends them (issue 17, item 1).

* The schema walk: every request member of ``ScRequest`` and ``SpuRequest`` and every list,
  text and data field reachable in it (through struct fields and the first element of lists
  of structs), so a request added to kolk.capnp is covered without editing anything.
* ``claiming``: a ~100-byte request whose list field, reached along such a path, claims
  millions of entries with no bytes behind them (an INLINE_COMPOSITE list of zero-size
  structs, or a list of VOID), laid out word by word; ``over_limit``: a request whose text or
  data field is one over its limit, built by pycapnp.
* ``Raw``: a TLS connection speaking the framing by hand.
* Run as ``python tests/amplified_attack.py attack ...`` this file is the attacker process
  used by tests/test_amplified_requests.py: several connections sending every claim (or
  CREDIT and CANCEL frames on an open stream) in a loop, printing what it sent as JSON.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from kolk.protocol import limits as L  # noqa: E402
from kolk.protocol.bounds import SIZE_LIMITS, plan_for  # noqa: E402
from kolk.protocol.framing import FrameDecoder, Kind, encode_frame  # noqa: E402
from kolk.protocol.messages import decode, schema, which  # noqa: E402

TOPIC = "amplified"
VICTIM_TOPIC = "amplified-created"  # what the createTopic claims would create if they got through
ANSWER_S_MAX = 1.0                  # each refusal, from sending to its answer
COUNTS = (1_000_000, 8_000_000)
ENCODINGS = ("composite", "void")
MIB = 1 << 20

# ---------------------------------------------------------------- the schema walk

ENVELOPES = {"SC": schema.ScRequest, "SPU": schema.SpuRequest}
Step = tuple[str, str]  # (field, "struct" | "element" | "list" | "text" | "data" | "text[]" | "data[]")


def request_members(service: str) -> list[tuple[str, Any]]:
    """(name, struct schema) of every request member of a service's request union."""
    return [(f.proto.name, f.schema) for f in ENVELOPES[service].schema.fields_list]


def slots(struct_schema: Any) -> list[tuple[str, str, Any]]:
    return [(f.proto.name, str(f.proto.slot.type.which()), f) for f in struct_schema.fields_list
            if f.proto.which() == "slot"]


def field_paths(struct_schema: Any, depth: int = 0) -> list[tuple[Step, ...]]:
    """Every list, text and data field reachable from a struct: through struct fields and
    through the first element of lists of structs (nested lists included)."""
    out: list[tuple[Step, ...]] = []
    if depth > L.NESTING_MAX:
        return out
    for name, kind, f in slots(struct_schema):
        if kind == "struct":
            out += [((name, "struct"),) + p for p in field_paths(f.schema, depth + 1)]
        elif kind in ("text", "data"):
            out.append(((name, kind),))
        elif kind == "list":
            out.append(((name, "list"),))
            element = str(f.proto.slot.type.list.elementType.which())
            if element == "struct":
                out += [((name, "element"),) + p for p in field_paths(f.schema.elementType, depth + 1)]
            elif element in ("text", "data"):
                out.append(((name, element + "[]"),))
    return out


def where(member_schema: Any, path: tuple[Step, ...]) -> str:
    """The field as the server's error names it: ``ProduceRequest.smartmodules[0].params``."""
    text = plan_for(member_schema).name
    for name, kind in path:
        text += f".{name}[0]" if kind in ("element", "text[]", "data[]") else f".{name}"
    return text


def owner_of_field(member_schema: Any, path: tuple[Step, ...]) -> Any:
    """The struct schema holding the last field of ``path``."""
    s = member_schema
    for name, kind in path[:-1]:
        f = s.fields[name]
        s = f.schema.elementType if kind == "element" else f.schema
    return s


def size_limit(member_schema: Any, path: tuple[Step, ...]) -> int:
    """The limit of a text or data field (or of each element of a text or data list)."""
    owner = plan_for(owner_of_field(member_schema, path)).name
    name, kind = path[-1]
    default = L.TEXT_CHARS_MAX if kind.startswith("text") else L.FRAME_BODY_BYTES_MAX
    return SIZE_LIMITS.get((owner, name), default)


def list_cases() -> list[tuple[str, str, tuple[Step, ...]]]:
    """(service, member, path) of every list field reachable in every request member."""
    return [(service, name, p) for service in ENVELOPES for name, s in request_members(service)
            for p in field_paths(s) if p[-1][1] == "list"]


def size_cases() -> list[tuple[str, str, tuple[Step, ...], int]]:
    """(service, member, path, limit) of every text and data field (and text or data list
    element) of every request whose limit a frame can exceed; the others are bounded by the
    frame itself (test_spu_hostile.py refuses a frame over FRAME_BODY_BYTES_MAX)."""
    out = []
    for service in ENVELOPES:
        for name, s in request_members(service):
            for p in field_paths(s):
                if p[-1][1] in ("text", "data", "text[]", "data[]"):
                    limit = size_limit(s, p)
                    if limit + 4096 < L.FRAME_BODY_BYTES_MAX:
                        out.append((service, name, p, limit))
    return out


# ---------------------------------------------------------------- hand-made messages


@dataclass
class _Struct:
    schema: Any
    data: bytearray = field(default_factory=bytearray)
    ptrs: dict[int, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = bytearray(8 * self.schema.node.struct.dataWordCount)

    @property
    def sizes(self) -> tuple[int, int]:
        return self.schema.node.struct.dataWordCount, self.schema.node.struct.pointerCount


@dataclass
class _StructList:
    elements: list[_Struct]


@dataclass
class _Claim:
    """A list claiming ``count`` entries with no bytes behind them: an INLINE_COMPOSITE list
    whose tag announces ``count`` structs of 0 data and 0 pointer words ("composite"), or a
    list of VOID elements ("void")."""

    count: int
    encoding: str


@dataclass
class _Bytes:
    value: bytes
    text: bool


_SCALARS = {"uint16": ("<H", 2), "uint32": ("<I", 4), "int32": ("<i", 4), "int64": ("<q", 8), "enum": ("<H", 2)}


def _set(s: _Struct, name: str, value: Any) -> None:
    f = s.schema.fields[name]
    kind = str(f.proto.slot.type.which())
    if f.proto.discriminantValue != 0xFFFF:
        struct.pack_into("<H", s.data, 2 * s.schema.node.struct.discriminantOffset, f.proto.discriminantValue)
    if kind in ("text", "data"):
        s.ptrs[f.proto.slot.offset] = _Bytes(value.encode() if kind == "text" else value, kind == "text")
    else:
        fmt, size = _SCALARS[kind]
        struct.pack_into(fmt, s.data, size * f.proto.slot.offset, value)


def _ptr(s: _Struct, name: str, child: Any) -> None:
    f = s.schema.fields[name]
    if f.proto.discriminantValue != 0xFFFF:
        struct.pack_into("<H", s.data, 2 * s.schema.node.struct.discriminantOffset, f.proto.discriminantValue)
    s.ptrs[f.proto.slot.offset] = child


def _struct_ptr(offset: int, data_words: int, ptr_words: int) -> bytes:
    return struct.pack("<Q", ((offset & 0x3FFFFFFF) << 2) | (data_words << 32) | (ptr_words << 48))


def _list_ptr(offset: int, element_size: int, count: int) -> bytes:
    return struct.pack("<Q", 1 | ((offset & 0x3FFFFFFF) << 2) | (element_size << 32) | (count << 35))


def serialize(root: _Struct) -> bytes:
    """One segment, standard serialization, laid out in order."""
    words: list[bytes] = [bytes(8)]

    def alloc(n: int) -> int:
        start = len(words)
        words.extend([bytes(8)] * n)
        return start

    def put_struct(s: _Struct, at: int) -> None:
        d, _p = s.sizes
        for i in range(d):
            words[at + i] = bytes(s.data[8 * i:8 * i + 8])
        for slot, child in sorted(s.ptrs.items()):
            place(child, at + d + slot)

    def place(obj: Any, ptr_at: int) -> None:
        if isinstance(obj, _Struct):
            d, p = obj.sizes
            start = alloc(d + p)
            words[ptr_at] = _struct_ptr(start - ptr_at - 1, d, p)
            put_struct(obj, start)
        elif isinstance(obj, _StructList):
            d, p = obj.elements[0].sizes
            n = len(obj.elements)
            tag = alloc(1 + n * (d + p))
            words[tag] = _struct_ptr(n, d, p)
            words[ptr_at] = _list_ptr(tag - ptr_at - 1, 7, n * (d + p))
            for i, e in enumerate(obj.elements):
                put_struct(e, tag + 1 + i * (d + p))
        elif isinstance(obj, _Claim):
            if obj.encoding == "void":
                words[ptr_at] = _list_ptr(0, 0, obj.count)
            else:
                tag = alloc(1)
                words[tag] = _struct_ptr(obj.count, 0, 0)
                words[ptr_at] = _list_ptr(tag - ptr_at - 1, 7, 0)
        elif isinstance(obj, _Bytes):
            raw = obj.value + (b"\0" if obj.text else b"")
            start = alloc((len(raw) + 7) // 8)
            padded = raw + bytes(-len(raw) % 8)
            for i in range(0, len(padded), 8):
                words[start + i // 8] = padded[i:i + 8]
            words[ptr_at] = _list_ptr(start - ptr_at - 1, 2, len(raw))
        else:
            raise TypeError(obj)

    place(root, 0)
    segment = b"".join(words)
    return struct.pack("<II", 0, len(segment) // 8) + segment


# What a request would do if its claim got through: a real topic name, a real record batch.
def _realistic(service: str, member: str, s: _Struct) -> None:
    if member == "createTopic":
        _set(s, "name", VICTIM_TOPIC)
        _set(s, "partitions", 1)
        _set(s, "replicationFactor", 1)
    elif member in ("produce", "stream"):
        from kolk.segments import build_batch

        _set(s, "topic", TOPIC)
        if member == "produce":
            _set(s, "acks", 1)  # leader
            _set(s, "records", build_batch([(None, b"must never be stored")]))
            _set(s, "timeoutMs", 5000)
        else:
            _set(s, "windowBytes", 1 << 16)


def claiming(service: str, member: str, path: tuple[Step, ...], count: int, encoding: str) -> bytes:
    """A request envelope whose ``member``, reached along ``path``, claims ``count`` entries
    in its last list field (a list of structs on the way holds one element)."""
    envelope = ENVELOPES[service]
    root = _Struct(envelope.schema)
    s = _Struct(envelope.schema.fields[member].schema)
    _ptr(root, member, s)
    _realistic(service, member, s)
    for name, kind in path[:-1]:
        f = s.schema.fields[name]
        if kind == "struct":
            child = _Struct(f.schema)
            _ptr(s, name, child)
        else:
            child = _Struct(f.schema.elementType)
            _ptr(s, name, _StructList([child]))
        s = child
    _ptr(s, path[-1][0], _Claim(count, encoding))
    return serialize(root)


def over_limit(service: str, member: str, path: tuple[Step, ...], limit: int) -> bytes:
    """A request (built by pycapnp) whose text or data field at ``path`` is one over ``limit``."""
    env = ENVELOPES[service].new_message()
    b = env.init(member)
    for name, kind in path[:-1]:
        b = b.init(name) if kind == "struct" else b.init(name, 1)[0]
    name, kind = path[-1]
    value: Any = "x" * (limit + 1) if kind.startswith("text") else b"x" * (limit + 1)
    if kind.endswith("[]"):
        b.init(name, 1)[0] = value
    else:
        setattr(b, name, value)
    return env.to_bytes()


def all_claims(service: str) -> list[tuple[str, bytes]]:
    """(field named in the refusal, body) of every claim against a service."""
    out = []
    for svc, member, path in list_cases():
        if svc == service:
            ms = ENVELOPES[svc].schema.fields[member].schema
            for count in COUNTS:
                for encoding in ENCODINGS:
                    out.append((where(ms, path), claiming(svc, member, path, count, encoding)))
    return out


# ---------------------------------------------------------------- a raw TLS connection


def stream_request(service: str) -> bytes:
    """A request opening the server's stream: ``stream`` of amplified-0 on an SPU, ``watch``
    on an SC, with a 64 KiB window."""
    env = ENVELOPES[service].new_message()
    if service == "SPU":
        req = env.init("stream")
        req.topic, req.windowBytes = TOPIC, 1 << 16
    else:
        env.init("watch").windowBytes = 1 << 16
    return env.to_bytes()


def client_context(pki: dict[str, str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki["ca"])
    ctx.load_cert_chain(pki["cert"], pki["key"])
    ctx.check_hostname = False
    return ctx


class Raw:
    """A TLS connection speaking the framing by hand, to send what no client would."""

    def __init__(self, service: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.response = schema.ScResponse if service == "SC" else schema.SpuResponse
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.frames: dict[int, Any] = {}
        self.next_id = 1

    @classmethod
    async def open(cls, service: str, address: str, ctx: ssl.SSLContext) -> "Raw":
        host, port = address.rsplit(":", 1)
        return cls(service, *await asyncio.open_connection(host, int(port), ssl=ctx, server_hostname=host))

    def send(self, body: bytes) -> int:
        rid = self.next_id
        self.next_id += 1
        self.writer.write(encode_frame(Kind.REQUEST, rid, body))
        return rid

    async def answer(self, rid: int, timeout_s: float) -> tuple[str, Any]:
        """The RESPONSE to request ``rid``: (response member, its struct)."""
        async with asyncio.timeout(timeout_s):
            while rid not in self.frames:
                data = await self.reader.read(1 << 16)
                if not data:
                    raise ConnectionError("the server closed the connection instead of answering")
                for f in self.decoder.feed(data):
                    if getattr(f, "kind", None) == Kind.RESPONSE:
                        self.frames[f.id] = f.body
        env = decode(self.response, self.frames.pop(rid))
        name = which(env)
        return name, getattr(env, name)

    async def closed_by_server(self, timeout_s: float) -> bool:
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    if not await self.reader.read(1 << 16):
                        return True
                except (ConnectionError, ssl.SSLError):
                    return True

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------- the attacker process


async def attack(service: str, address: str, pki: dict[str, str], seconds: float, connections: int,
                 burst: int, mode: str) -> dict[str, Any]:
    """Send claims (mode "claims") or CREDIT/CANCEL frames on an open stream (mode "frames")
    on ``connections`` connections until ``seconds`` have passed. What was sent and answered."""
    ctx = client_context(pki)
    claims = all_claims(service)
    stats: dict[str, Any] = {"sent": 0, "refused": 0, "wrong": [], "slowest_s": 0.0, "frames": 0}

    raws = [await Raw.open(service, address, ctx) for _ in range(connections)]
    print("started", flush=True)

    async def one(k: int) -> None:
        raw = raws[k]
        try:
            deadline = time.monotonic() + seconds
            if mode == "frames":
                await _flood_frames(raw, service, deadline, stats)
                return
            i = k
            while time.monotonic() < deadline:
                start = time.monotonic()
                sent = []
                for _ in range(burst):
                    what, body = claims[i % len(claims)]
                    i += 1
                    sent.append((what, raw.send(body)))
                await raw.writer.drain()
                for what, rid in sent:
                    member, error = await raw.answer(rid, 10)
                    stats["sent"] += 1
                    if member == "rejected" and error.code == "tooLarge" and what in error.message:
                        stats["refused"] += 1
                    elif len(stats["wrong"]) < 5:
                        stats["wrong"].append(f"{what}: {member} {error}")
                stats["slowest_s"] = max(stats["slowest_s"], time.monotonic() - start)
        finally:
            raw.close()

    await asyncio.gather(*(one(k) for k in range(connections)))
    return stats


async def _flood_frames(raw: Raw, service: str, deadline: float, stats: dict[str, Any]) -> None:
    """Open a stream, then send CREDIT frames of 0 bytes for it and CREDIT and CANCEL frames for
    ids that are not open, in bursts, until the deadline; the stream must stay open."""
    rid = raw.send(stream_request(service))
    member, resp = await raw.answer(rid, 10)
    assert member in ("stream", "watch") and resp.result.ok, (member, resp)
    chunk = b"".join(encode_frame(Kind.CREDIT, rid, b"", 0) + encode_frame(Kind.CREDIT, 1_000_000 + i, b"", 4096)
                     + encode_frame(Kind.CANCEL, 2_000_000 + i) for i in range(2000))
    reading = asyncio.ensure_future(_drain(raw))  # pushes the stream sends meanwhile
    try:
        while time.monotonic() < deadline:
            raw.writer.write(chunk)
            await raw.writer.drain()
            stats["frames"] += 6000
        if reading.done():
            raise ConnectionError(f"the server closed the stream's connection: {reading.exception()!r}")
    finally:
        reading.cancel()


async def _drain(raw: Raw) -> None:
    while await raw.reader.read(1 << 16):
        pass
    raise ConnectionError("EOF")


def _attack_main(argv: list[str]) -> None:
    """``attack SERVICE ADDRESS CA CERT KEY SECONDS CONNECTIONS BURST MODE``: print the stats as JSON."""
    service, address, ca, cert, key, seconds, connections, burst, mode = argv
    pki = {"ca": ca, "cert": cert, "key": key}
    stats = asyncio.run(attack(service, address, pki, float(seconds), int(connections), int(burst), mode))
    print(json.dumps(stats))


if __name__ == "__main__" and sys.argv[1:2] == ["attack"]:
    _attack_main(sys.argv[2:])
