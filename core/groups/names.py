"""Group names, the offsets topic, and which of its partitions coordinates a group."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import crc32c

from ..protocol import limits as L

OFFSETS_TOPIC = "_consumer_offsets"
OFFSETS_PARTITIONS_DEFAULT = 8
ASSIGNORS = ("sticky", "range", "roundrobin")
DEFAULT_ASSIGNOR = "sticky"

_NAME = re.compile(r"[A-Za-z0-9._-]+")  # fullmatch: "$" would accept a trailing newline


class TopicPartition(NamedTuple):
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}"


class GroupNameError(ValueError):
    """A group name that is not allowed; the message says why and what is."""


def group_problem(name: Any) -> str | None:
    """Why ``name`` is not a group name (one line), or None."""
    if not isinstance(name, str) or not name:
        return "the group name is empty: use 1-255 of A-Z a-z 0-9 . _ -"
    if len(name) > L.GROUP_NAME_CHARS_MAX:
        return (f"the group name has {len(name)} characters, more than {L.GROUP_NAME_CHARS_MAX}: "
                "use 1-255 of A-Z a-z 0-9 . _ -")
    if name in (".", "..") or not _NAME.fullmatch(name):
        return f"group name {name!r} is invalid: use 1-{L.GROUP_NAME_CHARS_MAX} of A-Z a-z 0-9 . _ - (and not '.' or '..')"
    return None


def check_group(name: Any) -> str:
    problem = group_problem(name)
    if problem is not None:
        raise GroupNameError(problem)
    return name


def group_partition(group: str, partitions: int) -> int:
    """The partition of ``_consumer_offsets`` whose leader coordinates ``group``: crc32c of the
    name's UTF-8 bytes modulo the partition count (the same hash as the key partitioner)."""
    if partitions < 1:
        raise ValueError("the offsets topic has no partitions")
    return int(crc32c.crc32c(group.encode())) % partitions


def sorted_partitions(parts: Any) -> list[TopicPartition]:
    return sorted(TopicPartition(t, p) for t, p in parts)
