"""The Node client's group limits (clients/node/src/groups/names.ts) are core/protocol/limits.py's
and core/client/group_core.py's: a change on one side without the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

from kolk.client import group_core
from kolk.groups import names
from kolk.protocol import limits as L

NAMES_TS = Path(__file__).resolve().parent.parent / "clients" / "node" / "src" / "groups" / "names.ts"

PYTHON = {
    "GROUP_NAME_CHARS_MAX": L.GROUP_NAME_CHARS_MAX,
    "INSTANCE_ID_CHARS_MAX": L.INSTANCE_ID_CHARS_MAX,
    "COMMIT_OFFSETS_MAX": L.COMMIT_OFFSETS_MAX,
    "HEARTBEAT_WAIT_MS_MAX": L.HEARTBEAT_WAIT_MS_MAX,
    "SESSION_TIMEOUT_MS_MIN": L.SESSION_TIMEOUT_MS_MIN,
    "SESSION_TIMEOUT_MS_MAX": L.SESSION_TIMEOUT_MS_MAX,
    "SESSION_TIMEOUT_MS_DEFAULT": L.SESSION_TIMEOUT_MS_DEFAULT,
    "REBALANCE_TIMEOUT_MS_MIN": L.REBALANCE_TIMEOUT_MS_MIN,
    "REBALANCE_TIMEOUT_MS_MAX": L.REBALANCE_TIMEOUT_MS_MAX,
    "REBALANCE_TIMEOUT_MS_DEFAULT": L.REBALANCE_TIMEOUT_MS_DEFAULT,
    "AUTO_COMMIT_INTERVAL_MS_MAX": group_core.AUTO_COMMIT_INTERVAL_MS_MAX,
}


def test_node_group_limits_are_pythons() -> None:
    text = NAMES_TS.read_text()
    node = {k: int(v.replace("_", "")) for k, v in re.findall(r"export const ([A-Z_]+) = ([0-9_]+);", text)}
    assert {k: node.get(k) for k in PYTHON} == PYTHON
    assert f'export const OFFSETS_TOPIC = "{names.OFFSETS_TOPIC}";' in text
    assert re.search(r"ASSIGNORS = \[(.*?)\]", text).group(1) == ", ".join(f'"{a}"' for a in names.ASSIGNORS)
