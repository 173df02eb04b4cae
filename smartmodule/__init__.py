"""The WebAssembly SmartModule engine and its ABI (DESIGN.md §8)."""
