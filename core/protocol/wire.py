"""Conversions between wire structs (core/protocol/kolk.capnp) and kolk values."""

from __future__ import annotations

import json
from typing import Any, Mapping

from .errors import ClusterUnavailableError, KolkError, RequestTimeoutError, error_from_wire, one_line
from .channel import CallRejected, ConnectionLost, StreamEnded
from .messages import schema

__all__ = ["schema", "camel", "set_error", "set_object", "object_dict", "error_dict", "config_map",
           "error_from_struct", "transport_error", "WATCH_EVENTS_PER_PUSH_MAX"]

# The size of a whole message is bounded by the framing, before a byte is decoded:
# core/protocol/limits.py FRAME_BODY_BYTES_MAX (issue 17 removed an unused second name for it).
WATCH_EVENTS_PER_PUSH_MAX = 500


def camel(code: str) -> str:
    """``already_exists`` -> ``alreadyExists``: metadata codes to wire codes."""
    head, *rest = code.split("_")
    return head + "".join(w.title() for w in rest)


def set_error(result: Any, code: str, message: str, leader: str | None = None, retriable: bool = False,
              outcome_unknown: bool = False) -> None:
    result.ok = False
    result.error.code = code
    result.error.message = one_line(message)  # never a traceback or a multi-line text on the wire
    result.error.leader = leader or ""
    result.error.retriable = retriable
    result.error.outcomeUnknown = outcome_unknown


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
    return {"code": e.code, "message": e.message, "leader": e.leader or None, "retriable": e.retriable,
            "outcome_unknown": e.outcomeUnknown}


def error_from_struct(e: Any) -> KolkError:
    """The KolkError for a wire Error struct."""
    err = error_from_wire(e.code, e.message, e.leader or None, e.retriable)
    if e.outcomeUnknown:
        err.outcome_unknown = True
    return err


def transport_error(e: BaseException, address: str, write: bool = False) -> KolkError:
    """The KolkError for a failure of the transport itself (a lost connection, a refused call,
    a missed deadline). For a write, a lost connection or a missed deadline leaves the outcome
    unknown; a refusal means it was not applied."""
    if isinstance(e, CallRejected):
        return error_from_struct(e.error)
    if isinstance(e, StreamEnded):
        return error_from_struct(e.error) if e.error is not None else ClusterUnavailableError(
            f"the stream from {address} ended")
    if isinstance(e, TimeoutError):
        err: KolkError = RequestTimeoutError(f"no answer from {address} in time")
        err.outcome_unknown = write
        return err
    err = ClusterUnavailableError(f"connection to {address} failed: {e}")
    err.outcome_unknown = write and isinstance(e, ConnectionLost) and e.sent
    return err


def config_map(entries: Any) -> Mapping[str, str]:
    return {kv.key: kv.value for kv in entries}
