"""Typed values of wire structs that both sides build and read (core/protocol/kolk.capnp).

:class:`SmartModuleInvocation` is one stage of a SmartModule chain, as a client asks for it
in a produce or stream request and as an SPU reads it: the module's name (``NAME`` or
``NAME@VERSION``), its ``init`` parameters, and, for an aggregate resuming a stream, the
accumulator to start from. ``to_wire``/``from_wire`` are the one mapping to and from the
schema's ``SmartModuleInvocation`` struct (``accumulator`` + ``hasAccumulator`` on the wire,
``bytes | None`` here).

It checks what the transport would refuse (``limits``), so a client refuses early what an
SPU would refuse. Part of the wire protocol: imports nothing of kolk outside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from . import limits as L
from .errors import InvalidRequestError

__all__ = ["SmartModuleInvocation"]


@dataclass(frozen=True)
class SmartModuleInvocation:
    """One stage of a chain. ``params`` are text to text; ``accumulator`` None means none
    (start from the module's own initial value), which differs from ``b""``."""

    name: str
    params: Mapping[str, str] = field(default_factory=dict)
    accumulator: bytes | None = None

    def __post_init__(self) -> None:
        name = self.name
        if not isinstance(name, str) or not name or len(name) > L.NAME_CHARS_MAX:
            raise InvalidRequestError(f"a SmartModule chain stage names a module (NAME or NAME@VERSION, 1-"
                                      f"{L.NAME_CHARS_MAX} characters), got {name!r:.300}")
        params = self.params
        if not isinstance(params, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in params.items()):
            raise InvalidRequestError(f"SmartModule {name}: params map text to text, got {params!r:.300}")
        if len(params) > L.SMARTMODULE_PARAMS_MAX:
            raise InvalidRequestError(f"SmartModule {name}: {len(params)} params, more than "
                                      f"{L.SMARTMODULE_PARAMS_MAX}")
        too_long = next((text for kv in params.items() for text in kv if len(text) > L.TEXT_CHARS_MAX), None)
        if too_long is not None:
            raise InvalidRequestError(f"SmartModule {name}: a param of {len(too_long)} characters, more than "
                                      f"{L.TEXT_CHARS_MAX}")
        accumulator = self.accumulator
        if accumulator is not None:
            if not isinstance(accumulator, (bytes, bytearray, memoryview)):
                raise InvalidRequestError(f"SmartModule {name}: the accumulator is bytes, got "
                                          f"{type(accumulator).__name__}")
            accumulator = bytes(accumulator)
            if len(accumulator) > L.ACCUMULATOR_BYTES_MAX:
                raise InvalidRequestError(f"SmartModule {name}: an accumulator of {len(accumulator)} bytes is more "
                                          f"than {L.ACCUMULATOR_BYTES_MAX}")
            object.__setattr__(self, "accumulator", accumulator)
        object.__setattr__(self, "params", MappingProxyType(dict(params)))

    def with_accumulator(self, accumulator: bytes | None) -> "SmartModuleInvocation":
        return SmartModuleInvocation(self.name, self.params, accumulator)

    def to_wire(self, builder: Any) -> None:
        """Fill a ``SmartModuleInvocation`` struct builder (an element of a request's
        ``smartmodules`` list, initialised by the caller)."""
        builder.name = self.name
        params = builder.init("params", len(self.params))
        for i, (key, value) in enumerate(self.params.items()):
            params[i].key = key
            params[i].value = value
        builder.hasAccumulator = self.accumulator is not None
        if self.accumulator is not None:
            builder.accumulator = self.accumulator

    def wire_fields(self) -> dict[str, Any]:
        """The struct's fields as a dict, for a request filled by field assignment
        (``conn.call("produce", ..., smartmodules=[i.wire_fields() for i in chain])``);
        the same fields :meth:`to_wire` sets."""
        fields: dict[str, Any] = {"name": self.name, "params": [{"key": k, "value": v} for k, v in self.params.items()],
                                  "hasAccumulator": self.accumulator is not None}
        if self.accumulator is not None:
            fields["accumulator"] = self.accumulator
        return fields

    @staticmethod
    def from_wire(reader: Any) -> "SmartModuleInvocation":
        """From a ``SmartModuleInvocation`` struct reader (bounded by the transport already).
        A key given twice keeps its last value."""
        return SmartModuleInvocation(reader.name, {kv.key: kv.value for kv in reader.params},
                                     bytes(reader.accumulator) if reader.hasAccumulator else None)
