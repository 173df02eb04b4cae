"""Kolk: a programmable streaming platform in Python.

The public API grows here as the parts land (DESIGN.md §1); today it is the storage engine,
``kolk.segments``.
"""

__version__ = "0.1.0"
