"""Durable Raft for the SC, on pysyncobj (DESIGN.md §3). Imports nothing else of kolk."""
