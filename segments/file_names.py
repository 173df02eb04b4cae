"""Segment file names: the base offset, zero-padded to 20 digits, then ``.log``.

Padding makes the lexical order of a directory listing the offset order, as in Kafka.
"""

from __future__ import annotations

import re

SUFFIX = ".log"
# A segment rewritten by the cleaner, written beside the original before the swap (cleaner.py).
CLEANED_SUFFIX = ".cleaned"
_NAME = re.compile(r"^(\d{20})\.log$")
_CLEANED = re.compile(r"^(\d{20})\.cleaned$")


def segment_file_name(base_offset: int) -> str:
    if base_offset < 0:
        raise ValueError(f"base offset {base_offset} is negative")
    return f"{base_offset:020d}{SUFFIX}"


def parse_segment_file_name(name: str) -> int | None:
    """The base offset a segment file name carries, or None if it is not a segment name."""
    m = _NAME.match(name)
    return int(m.group(1)) if m else None


def cleaned_file_name(base_offset: int) -> str:
    """The name of a rewritten segment before it is renamed over ``segment_file_name``."""
    return segment_file_name(base_offset)[: -len(SUFFIX)] + CLEANED_SUFFIX


def parse_cleaned_file_name(name: str) -> int | None:
    m = _CLEANED.match(name)
    return int(m.group(1)) if m else None
