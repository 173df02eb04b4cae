"""Cluster metadata: objects, event-sourced commands and controllers (DESIGN.md §3)."""
