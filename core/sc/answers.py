"""What the SC's answers share: a metadata object's wire form, and a command's outcome as a
``Result`` (core/sc/api.py and core/sc/topic_api.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..metadata.objects import MetaObject
from ..protocol.wire import camel, set_error

if TYPE_CHECKING:
    from .server import ScServer

OBJECT_WIRE_OVERHEAD = 128  # bytes an Object or Event adds to its texts on the wire, rounded up


@dataclass(frozen=True)
class Encoded:
    """An object's JSON texts, made once: to size an answer, then to fill it."""

    obj: MetaObject
    spec: str
    status: str

    @staticmethod
    def of(obj: MetaObject) -> "Encoded":
        return Encoded(obj, json.dumps(dict(obj.spec), sort_keys=True), json.dumps(dict(obj.status), sort_keys=True))

    @property
    def size(self) -> int:
        # json.dumps escapes everything outside ASCII, so characters are bytes.
        return len(self.spec) + len(self.status) + len(self.obj.kind) + len(self.obj.name) + OBJECT_WIRE_OVERHEAD

    def fill(self, target: Any) -> None:
        target.kind = self.obj.kind
        target.name = self.obj.name
        target.specJson = self.spec
        target.statusJson = self.status
        target.version = self.obj.version


def fill_error(result: Any, outcome: dict[str, Any], server: ScServer) -> bool:
    """``result`` from a command's outcome; whether it succeeded."""
    if outcome.get("ok"):
        result.ok = True
        return True
    code = outcome.get("code", "internal")
    wire_code = code if code in ("noLeader", "timeout") else camel(code)
    set_error(result, wire_code, outcome.get("message", ""), server.leader_admin(),
              bool(outcome.get("retriable", False)))
    return False
