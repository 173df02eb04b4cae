"""SmartModules on the SPU: which modules exist, and chains built from a client's request.

The SPU learns of stored modules (``NAME@VERSION`` objects) from its metadata watch and keeps
only their sha256, not their bytes. A stream or produce request names a chain; each stage is
resolved (a bare NAME means its latest version) and, the first time its sha256 is needed, its
bytes are fetched from the SC and compiled in a worker process under the compile limits
(smartmodule/compiler.py). The stages' memory is reserved from the SPU's SmartModule memory
budget, and the instances are made (``init`` runs) on the SmartModule worker pool
(module_pool.py): nothing of a module runs on the event loop. Errors name the module and what
is wrong; a busy pool or a spent budget is ``overloaded``.
"""

from __future__ import annotations

import asyncio
import base64
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from ..client.admin import AdminClient
from ..protocol.errors import KolkError
from ..protocol.limits import ACCUMULATOR_BYTES_MAX, CHAIN_STAGES_MAX
from ..smartmodule.budget import InstanceMemory, MemoryBudget
from ..smartmodule.chain import Chain, ChainError, Observe, Stage
from ..smartmodule.compiler import CompileLimits, Compiler, CompilerBusy
from ..smartmodule.limits import Limits, SmartModuleError
from ..smartmodule.sizes import size_text
from .module_pool import ModulePool, PoolOverloaded, default_workers

if TYPE_CHECKING:
    from ..smartmodule.engine import Instance, LoadedModule, ModuleCache


@dataclass(frozen=True)
class SmartModuleConfig:
    """What SmartModules may use on one SPU (kolk spu --smartmodule-*)."""

    limits: Limits = field(default_factory=Limits)
    workers: int = field(default_factory=default_workers)
    memory_bytes: int = 1 << 30  # the budget: every instance's memory and the compile cache
    chain_memory_bytes: int = 512 << 20  # what one chain's instances may grow to, together
    queue_max: int = 256
    per_tenant_queue_max: int = 64
    slice_s: float = 0.05  # a job stops between batches after this long, so others get a turn
    compile: CompileLimits = field(default_factory=CompileLimits)

    def __post_init__(self) -> None:
        if self.memory_bytes < 16 << 20:
            raise ValueError("--smartmodule-memory must be at least 16 MiB")
        if self.workers < 1 or self.workers > 256:
            raise ValueError("--smartmodule-workers must be 1..256")

    @property
    def cache_bytes(self) -> int:
        """The compile cache's share of the budget."""
        return min(128 << 20, self.memory_bytes // 8)


def version_key(version: str) -> tuple:
    """Order versions: dotted numbers numerically (1.10 after 1.9), anything else as text."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"[.\-]", version))


class SmartModuleRegistry:
    def __init__(self, admin: AdminClient, config: SmartModuleConfig | None = None) -> None:
        self.admin = admin
        self.config = config or SmartModuleConfig()
        self._cache: "ModuleCache | None" = None
        self._pool: ModulePool | None = None
        self.compiler = Compiler(self.config.limits, self.config.compile)
        self.budget = MemoryBudget(self.config.memory_bytes,
                                   hint=" (retry when streams end, or raise kolk spu --smartmodule-memory)")
        self.budget.take(self.config.cache_bytes, "the compile cache")  # its share, held for good
        self.modules: dict[str, dict[str, str]] = {}  # name -> version -> sha256
        self.observe: Observe | None = None  # every chain tells it of each call (core/spu/metrics.py)

    @property
    def cache(self) -> "ModuleCache":
        """The compile cache, made on first use: an SPU that never runs a SmartModule does not
        load wasmtime or start its epoch ticker (DESIGN.md §11)."""
        if self._cache is None:
            from ..smartmodule.engine import ModuleCache

            self._cache = ModuleCache(self.config.limits, bytes_max=self.config.cache_bytes)
        return self._cache

    @property
    def pool(self) -> ModulePool:
        if self._pool is None:
            c = self.config
            self._pool = ModulePool(c.workers, c.queue_max, c.per_tenant_queue_max)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

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

    async def _loaded(self, label: str, sha: str, tenant: str) -> "LoadedModule":
        """The compiled module of ``label``: from the cache, or fetched and compiled off the loop."""
        hit = self.cache.get(sha)
        if hit is not None:
            return hit
        obj = await self.admin.get_object("smartmodule", label, stale=True)
        if obj is None:
            raise KolkError(f"SmartModule {label} was deleted", code="notFound")
        wasm = base64.b64decode(obj["spec"]["wasm"])
        try:
            info, artifact = await self.compiler.compile(wasm, sha, tenant=tenant)
        except CompilerBusy as e:
            raise KolkError(f"SmartModule {label} cannot start now: {e}", code="overloaded") from None
        except SmartModuleError as e:
            raise KolkError(f"SmartModule {label} cannot start: {e.reason}: {e}", code="smartModule") from None
        if info.sha256 != sha:
            raise KolkError(f"SmartModule {label}: its bytes do not match sha256 {sha}", code="smartModule")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.cache.add_compiled, artifact, info)

    async def chain(self, invocations: list[dict[str, Any]], tenant: str = "") -> Chain | None:
        """Build the chain a request asks for (None for no stages); KolkError if it cannot."""
        if not invocations:
            return None
        if len(invocations) > CHAIN_STAGES_MAX:  # the transport refuses these already; other callers
            raise KolkError(f"a chain of {len(invocations)} SmartModules is more than {CHAIN_STAGES_MAX}",
                            code="invalidArgument")
        staged = []
        for inv in invocations:
            label, sha = self.resolve(inv["name"])
            staged.append((label, await self._loaded(label, sha, tenant), inv))
        chain_budget = MemoryBudget(self.config.chain_memory_bytes, "the chain's memory cap", parent=self.budget,
                                    reason="chainMemory",
                                    hint=f" (all stages of one chain together; a stage may grow to "
                                         f"{size_text(self.config.limits.memory_bytes)})")
        try:
            instances = await self.pool.run(tenant, _instantiate, staged, chain_budget, abandon=_close_all)
        except PoolOverloaded as e:
            raise KolkError(str(e), code="overloaded") from None
        if isinstance(instances, KolkError):
            raise instances
        return Chain([Stage(label, inst) for (label, _l, _i), inst in zip(staged, instances)], budget=chain_budget,
                     observe=self.observe)


async def run_chain(sm: SmartModuleRegistry, tenant: str, chain: Chain, data: bytes, batch_bytes_max: int,
                    renumber: bool = False) -> bytes:
    """Run ``chain`` over all of ``data`` on the worker pool, a time slice per job, so that
    other tenants' jobs take turns between slices (the produce path: all or nothing)."""
    out: list[bytes] = []
    pos: int | None = 0
    while pos is not None:
        try:
            part, pos = await sm.pool.run(tenant, chain.run, data, batch_bytes_max, renumber, False, pos,
                                          sm.config.slice_s)
        except PoolOverloaded as e:
            raise KolkError(str(e), code="overloaded") from None
        out.append(part)
    checked_accumulators(chain)
    return b"".join(out)


def checked_accumulators(chain: Chain) -> list[bytes]:
    """The chain's accumulators, each within what a push may carry (the same limit on produce,
    where none is sent, so that no chain keeps more than a consumer's could); ChainError if not."""
    accumulators = chain.accumulators
    for stage, acc in zip(chain.stages, accumulators):
        if len(acc) > ACCUMULATOR_BYTES_MAX:
            raise ChainError(stage.label, "aggregate", "badOutput", f"keeps an accumulator of {len(acc)} bytes, more "
                             f"than the limit of {ACCUMULATOR_BYTES_MAX}", None)
    return accumulators


def _close_all(instances: "list[Instance] | KolkError") -> None:
    """Close instances made for a request that went away meanwhile."""
    if isinstance(instances, list):
        for instance in instances:
            instance.close()


def _instantiate(staged: list[tuple[str, "LoadedModule", dict[str, Any]]],
                 budget: MemoryBudget) -> "list[Instance] | KolkError":
    """Make every stage's instance (on a worker thread: ``init`` is the module's code), each
    with its memory lent by ``budget``; on a failure, close what was made and return the error.
    The SPU's budget spent is ``overloaded`` (retry later); anything else, the chain's own."""
    made: list[Instance] = []
    for label, loaded, inv in staged:
        try:
            instance = loaded.instantiate(inv.get("params", {}), memory=InstanceMemory(budget, loaded.memory_limit))
        except SmartModuleError as e:
            for m in made:
                m.close()
            code = "overloaded" if e.reason == "memoryBudget" else "smartModule"
            return KolkError(f"SmartModule {label} ({loaded.kind}) cannot start: {e.reason}: {e}", code=code)
        if inv.get("accumulator") is not None and instance.kind == "aggregate":
            instance.accumulator = inv["accumulator"]
        made.append(instance)
    return made


def invocations_from_wire(items: Any) -> list[dict[str, Any]]:
    """The chain of a stream or produce request (a list of ``SmartModuleInvocation``
    readers, already bounded by the transport), as plain values."""
    return [{"name": it.name, "params": {kv.key: kv.value for kv in it.params},
             "accumulator": bytes(it.accumulator) if it.hasAccumulator else None} for it in items]
