"""The cluster's topic config defaults come from the SC's ``--topic-default KEY=VALUE`` flags.

The SC *leader* makes the state's ``config/topic-defaults`` object equal to its own flags: it
proposes a ``put_object`` when they differ and a ``delete_object`` when its flags are empty
and the object exists. With several SCs started with different flags the leader's win, and
they change when leadership moves (docs/metadata.md, "Topic config"); give every SC the same
flags. Apply refuses defaults that a value or an existing topic does not allow (naming it):
the leader logs that once and keeps the defaults in force.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..metadata.objects import CONFIG, State
from ..metadata.specs import SpecError
from ..metadata.topic_config import DEFAULTS_NAME, check_defaults

__all__ = ["parse_topic_defaults", "defaults_command"]


def parse_topic_defaults(texts: list[str]) -> dict[str, str]:
    """``KEY=VALUE`` flags as a map; ValueError (one line naming the flag) for a bad one."""
    out: dict[str, str] = {}
    for text in texts:
        key, sep, value = text.partition("=")
        if not sep:
            raise ValueError(f"--topic-default {text!r} must be KEY=VALUE")
        if key in out:
            raise ValueError(f"--topic-default {key} is given twice")
        out[key] = value
    try:
        check_defaults(out)
    except SpecError as e:
        raise ValueError(f"--topic-default: {e.message}") from None
    return out


def defaults_command(state: State, flags: Mapping[str, str], ts: int) -> dict[str, Any] | None:
    """The command that makes the state's defaults equal to ``flags``, or None when they are."""
    current = state.get(CONFIG, DEFAULTS_NAME)
    if current is None and not flags:
        return None
    if current is not None and dict(current.spec) == dict(flags):
        return None
    if not flags:
        return {"op": "delete_object", "kind": CONFIG, "name": DEFAULTS_NAME, "ts": ts}
    return {"op": "put_object", "kind": CONFIG, "name": DEFAULTS_NAME, "spec": dict(flags), "ts": ts}
