"""The Cap'n Proto schema, loaded once, and conversions between wire and kolk values."""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import capnp

SCHEMA_PATH = os.path.join(os.path.dirname(__file__), "kolk.capnp")
schema = capnp.load(SCHEMA_PATH)

# A request larger than this is refused before it is decoded (DEPENDENCIES.md: pycapnp's own
# cap is 64 MiB; ours is well below).
RPC_MESSAGE_BYTES_MAX = 16 << 20
WATCH_EVENTS_PER_PUSH_MAX = 500


def camel(code: str) -> str:
    """``already_exists`` -> ``alreadyExists``: metadata codes to wire codes."""
    head, *rest = code.split("_")
    return head + "".join(w.title() for w in rest)


def set_error(result: Any, code: str, message: str, leader: str | None = None, retriable: bool = False) -> None:
    result.ok = False
    result.error.code = code
    result.error.message = message
    result.error.leader = leader or ""
    result.error.retriable = retriable


def set_object(target: Any, obj: Any) -> None:
    target.kind = obj.kind
    target.name = obj.name
    target.specJson = json.dumps(dict(obj.spec), sort_keys=True)
    target.statusJson = json.dumps(dict(obj.status), sort_keys=True)
    target.version = obj.version


def object_dict(o: Any) -> dict[str, Any]:
    """A wire Object as a plain dict (client side)."""
    return {"kind": o.kind, "name": o.name, "spec": json.loads(o.specJson or "{}"),
            "status": json.loads(o.statusJson or "{}"), "version": o.version}


def error_dict(result: Any) -> dict[str, Any]:
    e = result.error
    return {"code": e.code, "message": e.message, "leader": e.leader or None, "retriable": e.retriable}


def config_map(entries: Any) -> Mapping[str, str]:
    return {kv.key: kv.value for kv in entries}
