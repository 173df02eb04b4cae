"""Sizes in messages, shared by the engine and the memory budget (no wasmtime here)."""

from __future__ import annotations


def size_text(n: int) -> str:
    """Bytes as MiB when whole, else KiB (memory sizes are whole pages of 64 KiB), else bytes."""
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{n >> 10} KiB" if n % 1024 == 0 else f"{n} bytes"
