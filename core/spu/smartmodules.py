"""SmartModules on the SPU: which modules exist, and chains built from a client's request.

The SPU learns of stored modules (``NAME@VERSION`` objects) from its metadata watch and keeps
only their sha256, size and kind, not their bytes. A stream or produce request names a chain;
each stage is resolved (a bare NAME means its latest version), its bytes fetched from the SC
once and compiled once per sha256 (``ModuleCache``), then instantiated with the request's
parameters. Errors name the module and what is wrong.
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any, Mapping

from ..client.admin import AdminClient
from ..protocol.errors import KolkError
from ..protocol.limits import CHAIN_STAGES_MAX
from ..smartmodule.chain import Chain, Stage
from ..smartmodule.limits import Limits, SmartModuleError

if TYPE_CHECKING:
    from ..smartmodule.engine import ModuleCache


def version_key(version: str) -> tuple:
    """Order versions: dotted numbers numerically (1.10 after 1.9), anything else as text."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-]", version))


class SmartModuleRegistry:
    def __init__(self, admin: AdminClient, limits: Limits | None = None) -> None:
        self.admin = admin
        self._limits = limits
        self._cache: "ModuleCache | None" = None
        self.modules: dict[str, dict[str, str]] = {}  # name -> version -> sha256
        self._bytes: dict[str, bytes] = {}  # sha256 -> wasm, for modules in the compile cache

    @property
    def cache(self) -> "ModuleCache":
        """The compile cache, made on first use: an SPU that never runs a SmartModule does not
        load wasmtime or start its epoch ticker (DESIGN.md §11)."""
        if self._cache is None:
            from ..smartmodule.engine import ModuleCache

            self._cache = ModuleCache(self._limits)
        return self._cache

    def on_event(self, name: str, obj: Mapping[str, Any] | None) -> None:
        if "@" not in name:
            return
        base, version = name.split("@", 1)
        if obj is None:
            self.modules.get(base, {}).pop(version, None)
            if not self.modules.get(base):
                self.modules.pop(base, None)
        else:
            self.modules.setdefault(base, {})[version] = obj["spec"].get("sha256", "")

    def clear(self) -> None:
        self.modules.clear()

    def resolve(self, name: str) -> tuple[str, str]:
        """``(NAME@VERSION, sha256)`` for a NAME or NAME@VERSION; raises KolkError notFound."""
        base, _, version = name.partition("@")
        versions = self.modules.get(base)
        if not versions:
            raise KolkError(f"SmartModule {base} is not stored in the cluster (kolk smartmodule create)",
                            code="notFound")
        if not version:
            version = max(versions, key=version_key)
        elif version not in versions:
            raise KolkError(f"SmartModule {base} has no version {version} (it has {', '.join(sorted(versions))})",
                            code="notFound")
        return f"{base}@{version}", versions[version]

    async def chain(self, invocations: list[dict[str, Any]]) -> Chain | None:
        """Build the chain a request asks for (None for no stages); KolkError if it cannot."""
        if not invocations:
            return None
        if len(invocations) > CHAIN_STAGES_MAX:  # the transport refuses these already; other callers
            raise KolkError(f"a chain of {len(invocations)} SmartModules is more than {CHAIN_STAGES_MAX}",
                            code="invalidArgument")
        stages = []
        for inv in invocations:
            label, sha = self.resolve(inv["name"])
            wasm = self._bytes.get(sha)
            if wasm is None:
                obj = await self.admin.get_object("smartmodule", label, stale=True)
                if obj is None:
                    raise KolkError(f"SmartModule {label} was deleted", code="notFound")
                wasm = base64.b64decode(obj["spec"]["wasm"])
            kind = "module"
            try:
                loaded = self.cache.load(wasm, sha)
                kind = loaded.kind
                self._bytes[sha] = wasm
                while len(self._bytes) > self.cache.capacity:
                    self._bytes.pop(next(iter(self._bytes)))
                instance = loaded.instantiate(inv.get("params", {}))
            except SmartModuleError as e:
                raise KolkError(f"SmartModule {label} ({kind}) cannot start: {e.reason}: {e}",
                                code="smartModule") from None
            if inv.get("accumulator") is not None and instance.kind == "aggregate":
                instance.accumulator = inv["accumulator"]
            stages.append(Stage(label, instance))
        return Chain(stages)


def invocations_from_wire(items: Any) -> list[dict[str, Any]]:
    """The chain of a stream or produce request (a list of ``SmartModuleInvocation``
    readers, already bounded by the transport), as plain values."""
    return [{"name": it.name, "params": {kv.key: kv.value for kv in it.params},
             "accumulator": bytes(it.accumulator) if it.hasAccumulator else None} for it in items]
