"""Topic commands beyond create and delete: ``alter_topic`` (change the config, compare-and-set
on the topic version), ``add_partitions`` (grow, never shrink), and the checks of the
cluster-wide topic defaults (object ``config/topic-defaults``). Pure command handlers
(metadata/apply.py); the config table and its checks are metadata/topic_config.py.
"""

from __future__ import annotations

from typing import Any, Mapping

from .command import (INVALID_ARGUMENT, INVALID_COMMAND, NOT_FOUND, REPLICATION_FACTOR_TOO_HIGH, Applied, Edit,
                      fail, get_field, get_name, get_ts, check_version, invalid_spec)
from .objects import CONFIG, PARTITION, SPU, TOPIC, State, partition_name
from .specs import CONFIG_ENTRIES_MAX, PartitionSpec, PartitionStatus, SpecError, TopicSpec
from .topic_config import BY_NAME, DEFAULTS_NAME, check_defaults, resolve, unknown_key_message

__all__ = ["alter_topic", "add_partitions", "defaults_of", "check_topic_config", "check_new_defaults",
           "put_partitions"]


def defaults_of(state: State) -> Mapping[str, str]:
    """The cluster's topic config defaults ({} when none are set)."""
    obj = state.get(CONFIG, DEFAULTS_NAME)
    return obj.spec if obj is not None else {}


def check_placeable(state: State, name: str, rf: int) -> None:
    """Enough registered SPUs for ``rf`` replicas of each partition."""
    spus = state.spu_ids()
    if rf > len(spus):
        raise fail(REPLICATION_FACTOR_TOO_HIGH,
                   f"topic {name}: replication factor {rf} is more than the {len(spus)} registered SPUs")


def check_topic_config(state: State, name: str, spec: TopicSpec) -> None:
    """The topic's effective config must be consistent with the cluster defaults in force."""
    try:
        resolve(spec.config, defaults_of(state), spec.replication_factor)
    except SpecError as e:
        raise invalid_spec(e, f"topic {name}") from None


def check_new_defaults(state: State, spec: Mapping[str, Any] | None) -> None:
    """A defaults change (``spec`` None: a delete, back to the table's defaults) is refused
    when a value is not allowed or when it would make an existing topic inconsistent (named)."""
    defaults: Mapping[str, Any] = spec or {}
    about = f"config {DEFAULTS_NAME}"
    if len(defaults) > CONFIG_ENTRIES_MAX:
        raise fail(INVALID_ARGUMENT, f"{about}: {len(defaults)} entries, more than {CONFIG_ENTRIES_MAX}")
    try:
        check_defaults(defaults)
    except SpecError as e:
        raise invalid_spec(e, about) from None
    for topic in sorted(state.all(TOPIC), key=lambda o: o.name):
        try:
            resolve(topic.spec.get("config", {}), defaults, topic.spec["replication_factor"])
        except SpecError as e:
            raise fail(INVALID_ARGUMENT, f"{about}: the change would make topic {topic.name} inconsistent: "
                                         f"{e.message}") from None


def put_partitions(edit: Edit, state: State, name: str, first: int, assignment: list[Any], rf: int) -> None:
    """Partitions ``first``.. of topic ``name`` from ``assignment`` (one replica list each,
    computed by the SC's placement and re-checked here), created at this command's version
    (their ``incarnation``)."""
    known = set(state.spu_ids())
    alive = {o.spec["id"] for o in state.all(SPU) if o.status.get("alive")}
    for i, replicas in enumerate(assignment, start=first):
        # The types first: a list inside the list must not reach set().
        if (not isinstance(replicas, list) or len(replicas) != rf
                or not all(isinstance(r, int) and not isinstance(r, bool) and r in known for r in replicas)
                or len(set(replicas)) != rf):
            raise fail(INVALID_COMMAND,
                       f"topic {name}: partition {i} needs {rf} distinct registered SPU ids, got {replicas!r}")
        leader = next((r for r in replicas if r in alive), None)
        edit.put(PARTITION, partition_name(name, i), PartitionSpec(name, i, tuple(replicas), edit.version).to_dict(),
                 PartitionStatus(leader, 0, tuple(replicas)).to_dict())


def _existing(state: State, cmd: Mapping[str, Any]) -> tuple[str, Any]:
    name = get_name(cmd, "topic")
    topic = state.get(TOPIC, name)
    if topic is None:
        raise fail(NOT_FOUND, f"topic {name} does not exist")
    check_version(topic, cmd, f"topic {name}")
    return name, topic


def _text_map(value: Any, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise fail(INVALID_COMMAND, f"alter_topic: {what} must map text keys to text values")
    return value


def alter_topic(state: State, cmd: Mapping[str, Any]) -> Applied:
    """``set`` adds or replaces keys, ``delete`` removes them (back to the cluster default); the
    result is checked as create checks a config, against the defaults in force."""
    ts = get_ts(cmd)
    name, topic = _existing(state, cmd)
    changes = _text_map(get_field(cmd, "set", dict, optional=True) or {}, "set")
    removed = get_field(cmd, "delete", list, optional=True) or []
    if not all(isinstance(k, str) for k in removed):
        raise fail(INVALID_COMMAND, "alter_topic: delete must be a list of keys")
    if not changes and not removed:
        raise fail(INVALID_ARGUMENT, f"topic {name}: nothing to change (give config keys to set or delete)")
    if len(changes) > CONFIG_ENTRIES_MAX or len(removed) > CONFIG_ENTRIES_MAX:
        raise fail(INVALID_ARGUMENT, f"topic {name}: at most {CONFIG_ENTRIES_MAX} keys to set and to delete")
    config = dict(topic.spec.get("config", {}))
    for key in sorted(set(removed)):
        if key in changes:
            raise fail(INVALID_ARGUMENT, f"topic {name}: config {key} is both set and deleted")
        if key not in BY_NAME and key not in config:  # a stored key the table no longer knows may go
            raise fail(INVALID_ARGUMENT, f"topic {name}: {unknown_key_message(key)}")
        config.pop(key, None)
    config.update(changes)
    try:
        spec = TopicSpec(topic.spec["partitions"], topic.spec["replication_factor"], config)
    except SpecError as e:
        raise invalid_spec(e, f"topic {name}") from None
    check_topic_config(state, name, spec)
    edit = Edit(state)
    edit.put(TOPIC, name, spec.to_dict(), topic.status)
    return edit.finish(ts, {"name": name, "version": edit.version})


def add_partitions(state: State, cmd: Mapping[str, Any]) -> Applied:
    """Grow a topic to ``count`` partitions; the new ones are placed by ``assignment``."""
    ts = get_ts(cmd)
    name, topic = _existing(state, cmd)
    count = get_field(cmd, "count", int)
    assignment = get_field(cmd, "assignment", list)
    current = topic.spec["partitions"]
    rf = topic.spec["replication_factor"]
    if count <= current:
        raise fail(INVALID_ARGUMENT, f"topic {name} has {current} partitions; add-partitions can only grow it, "
                                     f"got {count}")
    try:
        spec = TopicSpec(count, rf, topic.spec.get("config", {}))
    except SpecError as e:
        raise invalid_spec(e, f"topic {name}") from None
    check_placeable(state, name, rf)
    if len(assignment) != count - current:
        raise fail(INVALID_COMMAND, f"topic {name}: assignment has {len(assignment)} entries for "
                                    f"{count - current} new partitions")
    edit = Edit(state)
    put_partitions(edit, state, name, current, assignment, rf)
    edit.put(TOPIC, name, spec.to_dict(), topic.status)
    return edit.finish(ts, {"name": name, "partitions": count, "version": edit.version})
