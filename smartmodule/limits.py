"""What a SmartModule may use, and how it fails: the parts of the engine that do not need
wasmtime, so that a process loads wasmtime only when it runs a module (DESIGN.md §11)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    fuel_per_call: int = 100_000_000
    memory_bytes: int = 64 << 20
    wall_clock_ms: int = 2_000
    output_bytes_max: int = 16 << 20
    output_ratio_max: int = 64  # output at most this many times the input
    module_bytes_max: int = 2 << 20

    def __post_init__(self) -> None:
        if self.fuel_per_call < 1_000 or self.memory_bytes < 64 << 10 or self.wall_clock_ms < 10:
            raise ValueError("SmartModule limits: fuel >= 1000, memory >= 64 KiB, wall clock >= 10 ms")


class SmartModuleError(Exception):
    """A module failed. ``reason``: invalidModule, initFailed, trap, fuelExhausted, timeout,
    recordError, badOutput, allocFailed, memoryBudget / chainMemory (no memory left in the SPU's
    budget / the chain's cap for a new instance). ``record_index``: the input record, when known."""

    def __init__(self, reason: str, message: str, record_index: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.record_index = record_index


@dataclass(frozen=True)
class ModuleInfo:
    """What checking a module found: its kind, whether it has ``init``, and the memory an
    instance of it may use (the cap, or less when the module declares a smaller maximum)."""

    kind: str
    has_init: bool
    sha256: str
    memory_limit: int  # what an instance's memory may grow to
    initial_memory: int = 0  # what it starts with (the memory's minimum)

    def to_json(self) -> dict:
        return {"kind": self.kind, "has_init": self.has_init, "sha256": self.sha256, "memory_limit": self.memory_limit,
                "initial_memory": self.initial_memory}

    @staticmethod
    def from_json(d: dict) -> "ModuleInfo":
        return ModuleInfo(str(d["kind"]), bool(d["has_init"]), str(d["sha256"]), int(d["memory_limit"]),
                          int(d.get("initial_memory", 0)))
