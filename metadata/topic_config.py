"""A topic's config: the ONE table of keys the cluster knows, their checks, and their
resolution against the cluster-wide defaults (docs/metadata.md, "Topic config", is generated
from :data:`KEYS` by :func:`markdown_table`; tests/test_topic_config.py compares the two).

Values travel as text (``"60000"``); a number is whole and decimal (ASCII digits, an optional
leading ``-`` only where ``-1`` is allowed): no ``1e3``, no ``" 5"``, no ``+5``, no ``0x10``.
Every refusal is a :class:`~kolk.metadata.specs.SpecError` naming the key (``config.<key>``),
the value and what is allowed; ``apply`` prefixes it with the topic
(``topic orders: config retention_ms=-5 is not allowed: -1 (keep forever) or 1-3153600000000 ms``).

Three levels of check:

* :func:`check_entries` -- each key known, each value within its range; ``min_in_sync`` at
  most the replication factor. What :class:`~kolk.metadata.specs.TopicSpec` checks.
* :func:`check_defaults` -- the same for the cluster defaults (object ``config/topic-defaults``,
  from the SC's ``--topic-default`` flags), which have no replication factor.
* :func:`resolve` -- the effective config of a topic (topic value, else default, else the
  table's default) with the pairs checked: ``segment_bytes`` at least ``max_message_bytes``,
  ``min_in_sync`` at most the replication factor.

Pure, standard library only (metadata imports nothing but raft; the storage's limits it must
agree with are compared in a test).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Mapping

from .specs import SpecError

__all__ = ["Key", "KEYS", "KEY_NAMES", "TopicConfig", "DEFAULTS_NAME", "check_entries", "check_defaults",
           "resolve", "sources", "markdown_table", "check_value", "unknown_key_message"]

DEFAULTS_NAME = "topic-defaults"  # the `config` object holding the cluster-wide defaults

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40
PIB = 1 << 50
SECOND_MS = 1000
DAY_MS = 24 * 3600 * SECOND_MS
YEARS_100_MS = 100 * 365 * DAY_MS  # 3,153,600,000,000: the upper bound of every duration
BATCH_BYTES_MIN = 90  # the smallest batch the storage writes (segments/config.py BATCH_BYTES_MIN)
BATCH_BYTES_MAX = 4 * MIB  # the storage's batch limit (segments/config.py LogConfig.batch_bytes_max)
REPLICAS_MAX = 7  # specs.REPLICATION_FACTOR_MAX

# Decimal digits only; the sign is allowed by the range check (-1 where it means "no limit").
_NUMBER = re.compile(r"-?[0-9]{1,30}")
VALUE_CHARS_SHOWN = 40


@dataclass(frozen=True)
class Key:
    """One row of the table. ``lo``..``hi`` for numbers (``minus_one``: ``-1`` allowed too,
    meaning ``minus_one_means``); ``choices`` for text."""

    name: str
    type: str  # "int" or "choice"
    unit: str
    default: str  # the value when neither the topic nor the cluster sets one ("" for min_in_sync)
    default_text: str  # the default as the docs say it
    meaning: str
    lo: int = 0
    hi: int = 0
    minus_one: str = ""  # what -1 means, when it is allowed
    choices: tuple[str, ...] = ()

    def allowed(self, rf: int | None = None) -> str:
        """What this key allows, in words (the tail of every refusal)."""
        if self.type == "choice":
            return " | ".join(self.choices)
        hi = self.hi if rf is None or self.name != "min_in_sync" else min(self.hi, rf)
        span = f"{self.lo}-{hi}" + (f" {self.unit}" if self.unit else "")
        if self.name == "min_in_sync":
            span = f"{self.lo}-{hi} replicas" + ("" if rf is None else f" (the replication factor is {rf})")
        return f"-1 ({self.minus_one}) or {span}" if self.minus_one else span

    def allowed_doc(self) -> str:
        if self.type == "choice":
            return ", ".join(f"`{c}`" for c in self.choices)
        if self.name == "min_in_sync":
            return f"1 to the replication factor (at most {REPLICAS_MAX})"
        return self.allowed()


KEYS: tuple[Key, ...] = (
    Key("retention_ms", "int", "ms", str(7 * DAY_MS), "604800000 (7 days)",
        "delete a segment once its newest record is older than this", 1, YEARS_100_MS, minus_one="keep forever"),
    Key("retention_bytes", "int", "bytes", "-1", "-1 (no size limit)",
        "per partition: delete the oldest segments while the log is larger than this", 1, PIB,
        minus_one="no size limit"),
    Key("segment_bytes", "int", "bytes", str(GIB), "1073741824 (1 GiB)",
        "roll the active segment before it would pass this size (at least max_message_bytes)", KIB, TIB),
    Key("segment_ms", "int", "ms", str(7 * DAY_MS), "604800000 (7 days)",
        "roll the active segment once its first record is this old", SECOND_MS, YEARS_100_MS),
    Key("cleanup_policy", "choice", "", "delete", "delete",
        "delete: retention deletes old segments; compact: keep the newest record per key; compact,delete: both",
        choices=("delete", "compact", "compact,delete")),
    Key("delete_retention_ms", "int", "ms", str(DAY_MS), "86400000 (1 day)",
        "compacted topics: how long a tombstone (null value) stays readable after compaction reaches it",
        0, YEARS_100_MS),
    Key("min_compaction_lag_ms", "int", "ms", "0", "0",
        "compacted topics: records newer than this are never compacted (erasure ignores it)", 0, YEARS_100_MS),
    Key("max_message_bytes", "int", "bytes", str(BATCH_BYTES_MAX), "4194304 (4 MiB, the storage's batch limit)",
        "the largest batch a producer may send to the topic", BATCH_BYTES_MIN, BATCH_BYTES_MAX),
    Key("min_in_sync", "int", "replicas", "", "a majority of the replicas (replication factor // 2 + 1)",
        "acks=all writes need at least this many in-sync replicas", 1, REPLICAS_MAX),
    Key("compression", "choice", "", "producer", "producer",
        "what the SPU stores: producer keeps what was sent; none, gzip or zstd recompress",
        choices=("producer", "none", "gzip", "zstd")),
)
BY_NAME: Mapping[str, Key] = {k.name: k for k in KEYS}
KEY_NAMES: tuple[str, ...] = tuple(sorted(BY_NAME))


@dataclass(frozen=True)
class TopicConfig:
    """A topic's effective config: every key resolved (topic, else cluster default, else the
    table's default), typed. -1 means "no limit" for ``retention_ms`` and ``retention_bytes``."""

    retention_ms: int
    retention_bytes: int
    segment_bytes: int
    segment_ms: int
    cleanup_policy: str
    delete_retention_ms: int
    min_compaction_lag_ms: int
    max_message_bytes: int
    min_in_sync: int
    compression: str

    @property
    def compacted(self) -> bool:
        return "compact" in self.cleanup_policy.split(",")

    @property
    def deletes(self) -> bool:
        return "delete" in self.cleanup_policy.split(",")


def _shown(value: str) -> str:
    text = value if value and value.isprintable() and not any(c.isspace() for c in value) else repr(value)
    return text if len(text) <= VALUE_CHARS_SHOWN else text[:VALUE_CHARS_SHOWN] + "..."


def unknown_key_message(key: str) -> str:
    near = difflib.get_close_matches(key.lower().replace(".", "_").replace("-", "_"), KEY_NAMES, n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return f"unknown config key {_shown(key)}{hint}; known keys: {', '.join(KEY_NAMES)}"


def check_value(key: str, value: Any, rf: int | None = None, source: str = "") -> int | str:
    """``value`` of ``key`` typed, or SpecError naming both and what is allowed. ``rf``: the
    topic's replication factor (bounds ``min_in_sync``); ``source``: said after the value
    (``" (cluster default)"``)."""
    k = BY_NAME.get(key) if isinstance(key, str) else None
    if k is None:
        raise SpecError(f"config.{key}", unknown_key_message(str(key)))
    if not isinstance(value, str):
        raise SpecError(f"config.{key}", f"config {key} must be text, got {type(value).__name__}")
    if k.type == "choice":
        if value not in k.choices:
            raise SpecError(f"config.{key}", f"config {key}={_shown(value)}{source} is not allowed: {k.allowed()}")
        return value
    if not _NUMBER.fullmatch(value):
        raise SpecError(f"config.{key}", f"config {key}={_shown(value)}{source} is not allowed: a whole number, "
                                         f"{k.allowed(rf)}")
    number = int(value)
    hi = k.hi if rf is None or key != "min_in_sync" else min(k.hi, rf)
    if not (k.lo <= number <= hi or (k.minus_one and number == -1)):
        raise SpecError(f"config.{key}", f"config {key}={_shown(value)}{source} is not allowed: {k.allowed(rf)}")
    return number


def check_entries(config: Mapping[str, str], rf: int) -> None:
    """Each key known and each value allowed (``min_in_sync`` at most ``rf``), in key order so
    that the first refusal is the same everywhere."""
    for key in sorted(config):
        check_value(key, config[key], rf)


def check_defaults(defaults: Mapping[str, str]) -> None:
    """The cluster defaults: each key known and allowed, and the pairs that do not depend on
    a topic consistent."""
    if not isinstance(defaults, Mapping):
        raise SpecError("config", "the topic defaults are a map of key to text value")
    for key in sorted(defaults):
        check_value(key, defaults[key], None, " (cluster default)")
    _check_pairs({}, defaults, None)


def _effective(key: str, topic: Mapping[str, str], defaults: Mapping[str, str]) -> tuple[str, str]:
    if key in topic:
        return topic[key], ""
    if key in defaults:
        return defaults[key], " (cluster default)"
    return BY_NAME[key].default, " (default)"


def _check_pairs(topic: Mapping[str, str], defaults: Mapping[str, str], rf: int | None) -> None:
    seg, seg_from = _effective("segment_bytes", topic, defaults)
    batch, batch_from = _effective("max_message_bytes", topic, defaults)
    if int(seg) < int(batch):
        raise SpecError("config.segment_bytes", f"config segment_bytes={seg}{seg_from} is not allowed: "
                                                f"segment_bytes below the batch limit max_message_bytes={batch}"
                                                f"{batch_from}")
    raw, raw_from = _effective("min_in_sync", topic, defaults)
    if rf is not None and raw and int(raw) > rf:
        raise SpecError("config.min_in_sync", f"config min_in_sync={raw}{raw_from} is not allowed: "
                                              f"{BY_NAME['min_in_sync'].allowed(rf)}")


def resolve(topic_config: Mapping[str, str], defaults: Mapping[str, str], replication_factor: int) -> TopicConfig:
    """The effective config of a topic: its own value, else the cluster default, else the
    table's. Raises SpecError for an unknown key, a bad value or an inconsistent pair."""
    check_entries(topic_config, replication_factor)
    for key in sorted(defaults):
        check_value(key, defaults[key], None, " (cluster default)")
    _check_pairs(topic_config, defaults, replication_factor)
    values: dict[str, int | str] = {}
    for k in KEYS:
        raw, _ = _effective(k.name, topic_config, defaults)
        if k.name == "min_in_sync" and not raw:
            values[k.name] = replication_factor // 2 + 1
        else:
            values[k.name] = int(raw) if k.type == "int" else raw
    return TopicConfig(**values)  # type: ignore[arg-type]


def sources(topic_config: Mapping[str, str], defaults: Mapping[str, str],
            replication_factor: int) -> list[tuple[str, str, str]]:
    """(key, effective value, source) for every key, in table order; source is ``topic``,
    ``default`` (the cluster's --topic-default) or ``built-in`` (the table)."""
    resolved = resolve(topic_config, defaults, replication_factor)
    out = []
    for k in KEYS:
        source = "topic" if k.name in topic_config else "default" if k.name in defaults else "built-in"
        out.append((k.name, str(getattr(resolved, k.name)), source))
    return out


def markdown_table() -> str:
    """The table as docs/metadata.md shows it (a test keeps the page equal to this)."""
    rows = ["| key | type | unit | default | allowed | meaning |", "| --- | --- | --- | --- | --- | --- |"]
    for k in KEYS:
        kind = "whole number" if k.type == "int" else "one of"
        rows.append(f"| `{k.name}` | {kind} | {k.unit or '-'} | {k.default_text} | {k.allowed_doc()} | {k.meaning} |")
    return "\n".join(rows)
