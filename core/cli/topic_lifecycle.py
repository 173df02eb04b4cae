"""``kolk topic alter | add-partitions | erase | erase-status``, the ``--config`` flags they share
with ``kolk topic create``, and the effective config ``kolk topic describe`` shows
(docs/operations.md, "Topic lifecycle"; docs/metadata.md, "Topic config").

Every bad input is one line naming it, before anything is sent when the CLI can tell: an
unknown key, a value out of range, a flag without ``=``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from ..client.admin import AdminClient
from ..client.erasure import Erasure
from ..metadata.specs import SpecError, TopicSpec
from ..metadata.topic_config import DEFAULTS_NAME, check_value, sources
from ..protocol.errors import KolkError
from . import args as A

ACTIONS = ("alter", "add-partitions", "erase", "erase-status")
ERASE_TIMEOUT_S_MAX = 7 * 24 * 3600.0
ERASE_TIMEOUT = A.float_in(0.1, ERASE_TIMEOUT_S_MAX)
KEY_CHARS_SHOWN = 40


def add_commands(tsub: Any, sc_option: Callable[[argparse.ArgumentParser], None]) -> None:
    a = tsub.add_parser("alter", help="change a topic's config (compare-and-set on its version with --expected-version)")
    a.add_argument("name")
    a.add_argument("--config", action="append", default=[], metavar="KEY=VALUE", help="set a key (repeatable)")
    a.add_argument("--delete-config", action="append", default=[], metavar="KEY",
                   help="remove a key: the cluster default applies again (repeatable)")
    a.add_argument("--expected-version", type=A.int_in(0, A.INT64_MAX),
                   help="change only if the topic is still at this version")
    sc_option(a)
    p = tsub.add_parser("add-partitions", help="grow a topic to --count partitions (never shrinks; keys move to "
                                               "other partitions)")
    p.add_argument("name")
    p.add_argument("--count", type=A.PARTITIONS, required=True, help=f"the new partition count (at most "
                                                                      f"{A.PARTITIONS_MAX})")
    p.add_argument("--expected-version", type=A.int_in(0, A.INT64_MAX),
                   help="grow only if the topic is still at this version")
    sc_option(p)
    e = tsub.add_parser("erase", help="erase every record of one key from a compacted topic, on every replica "
                                      "(docs/lifecycle.md)")
    e.add_argument("name")
    e.add_argument("--key", required=True, help="the record key (UTF-8 text)")
    e.add_argument("--partition", type=A.PARTITION, action="append",
                   help="erase only in this partition (repeatable; default: every partition of the topic)")
    e.add_argument("--no-wait", action="store_true", help="print the erasure's id and return; poll it with "
                                                          "`kolk topic erase-status ID`")
    e.add_argument("--timeout", type=ERASE_TIMEOUT, default=300.0,
                   help=f"seconds to wait for every replica (default 300; at most {ERASE_TIMEOUT_S_MAX:g})")
    sc_option(e)
    s = tsub.add_parser("erase-status", help="an erasure's state: which replicas are done")
    s.add_argument("id", help="the erasure id, TOPIC-PARTITION@OFFSET")
    sc_option(s)


def config_flags(flags: list[str], topic: str) -> dict[str, str]:
    """``--config KEY=VALUE`` flags as a map, each checked against the config table (the SC's
    own message); KolkError, one line, for the first bad one."""
    config: dict[str, str] = {}
    for kv in flags:
        if "=" not in kv:
            raise KolkError(f"--config {kv[:KEY_CHARS_SHOWN]!r} must be KEY=VALUE")
        k, v = kv.split("=", 1)
        if k in config:
            raise KolkError(f"--config {k[:KEY_CHARS_SHOWN]} is given twice")
        try:
            check_value(k, v)
        except SpecError as e:
            raise KolkError(f"topic {topic}: {e.message}") from None
        config[k] = v
    return config


def typed_topic(topic: dict[str, Any]) -> TopicSpec:
    """A topic's spec, typed; one line naming the key when it was stored before the config table
    and holds a key or value the table refuses (an alter deleting or fixing it repairs it)."""
    try:
        return TopicSpec.from_dict(topic["spec"])
    except SpecError as e:
        raise KolkError(f"topic {topic['name']}: its stored {e.message}; fix it with `kolk topic alter "
                        f"{topic['name']} --delete-config {e.field.removeprefix('config.')}`") from None


async def effective_config(client: AdminClient, topic: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(key, value, source) of every key for a topic: source ``topic``, ``default`` (the
    cluster's --topic-default) or ``built-in`` (the table's default)."""
    spec = typed_topic(topic)
    defaults = await client.get_object("config", DEFAULTS_NAME, stale=True)
    try:
        return sources(spec.config, defaults["spec"] if defaults else {}, spec.replication_factor)
    except SpecError as e:
        raise KolkError(f"topic {topic['name']}: {e.message}") from None


def _progress(erasure: Erasure) -> None:
    print(erasure.progress_line(), file=sys.stderr, flush=True)


def _erasure_line(e: Erasure) -> str:
    where = f"{e.topic}-{e.partition}"
    if not e.finished:
        return f"erasure {e.name} pending: {e.progress_line()}"
    if e.note:
        return f"erasure {e.name} done ({e.note})"
    if e.found:
        return (f"erasure {e.name} done: every record of the key (sha256 {e.key_sha256[:4]}…) is erased from every "
                f"replica of {where}")
    return (f"erasure {e.name} done: {where} held no record of the key (sha256 {e.key_sha256[:4]}…) besides the "
            "erasure's own tombstone, which is gone too")


async def run(args: argparse.Namespace, client: AdminClient, show: Callable[[Any, str], None]) -> None:
    """One of ACTIONS; ``show(value, text)`` prints (JSON with --json)."""
    if args.action == "alter":
        changes = config_flags(args.config, args.name)
        removed = args.delete_config  # an unknown key may be deleted when stored (before the table): the SC decides
        if not changes and not removed:
            raise KolkError(f"topic {args.name}: nothing to change (give --config KEY=VALUE or --delete-config KEY)")
        topic = await client.alter_topic(args.name, changes, removed, args.expected_version)
        show(topic, f"topic {args.name} altered (version {topic['version']})")
    elif args.action == "add-partitions":
        topic = await client.add_partitions(args.name, args.count, args.expected_version)
        show(topic, f"topic {args.name} now has {topic['spec']['partitions']} partitions; keys hash to other "
                    "partitions from now on")
    elif args.action == "erase":
        progress = None if args.no_wait or args.json else _progress
        erasures = await client.erase_key(args.name, args.key.encode(), partitions=args.partition,
                                          wait=not args.no_wait, timeout_s=args.timeout, progress=progress)
        text = " ".join(e.name for e in erasures) if args.no_wait else "\n".join(_erasure_line(e) for e in erasures)
        show([e.to_dict() for e in erasures], text)
    elif args.action == "erase-status":
        erasure = await client.erasure_status(args.id)
        show(erasure.to_dict(), _erasure_line(erasure))
