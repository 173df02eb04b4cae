"""A stored object's spec the SC cannot read is the client's mistake, answered
``invalidArgument`` in one line naming the problem, never ``internal error ... ValueError`` or
``RecursionError`` (issue 17, F5). Through a real SC over mutual TLS, as admin."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, run_async
from kolk.protocol import limits as L

BIG = "9" * 5000


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("badspec")), spus=1, tls=True, clients=("admin",))
    try:
        c.start()
        yield c
    finally:
        c.close()


def _put(c: DataPlaneCluster, kind: str, name: str, spec_json: str) -> tuple[str, str]:
    """(error code, message) of putObject; ("ok", "") if it was stored."""
    async def body() -> tuple[str, str]:
        client = c.client(as_="admin")
        try:
            sc = await client.admin._connect(20)
            r = await sc.call("putObject", 20, kind=kind, name=name, specJson=spec_json, hasExpected=False,
                              expectedVersion=0)
            return ("ok", "") if r.result.ok else (r.result.error.code, r.result.error.message)
        finally:
            await client.close()
    return run_async(body)


CASES = {
    "policy source with a 5,000-digit integer": (
        "policy", "active", json.dumps({"version": 2, "source": f"version = {BIG}\n", "sha256": "x"}),
        "policy v2:1: an integer of 5,000 digits: integers have at most 4,300 digits"),
    "policy source with a 5,000-digit integer on line 2": (
        "policy", "active", json.dumps({"version": 2, "source": f"version = 2\nx = {BIG}\n", "sha256": "x"}),
        "policy v2:2: an integer of 5,000 digits: integers have at most 4,300 digits"),
    "specJson nested 100,000 deep": (
        "smartmodule", "x@1", "[" * 100_000 + "]" * 100_000,
        f"specJson nests arrays and objects more than {L.SPEC_JSON_DEPTH_MAX} deep"),
    "specJson nested one level too deep": (
        "smartmodule", "x@1", "[" * (L.SPEC_JSON_DEPTH_MAX + 1) + "]" * (L.SPEC_JSON_DEPTH_MAX + 1),
        f"specJson nests arrays and objects more than {L.SPEC_JSON_DEPTH_MAX} deep"),
    "specJson with a 5,000-digit integer": (
        "smartmodule", "x@1", '{"a": ' + BIG + "}",
        f"specJson holds an integer of 5,000 digits; at most {L.SPEC_JSON_DIGITS_MAX:,}"),
    "specJson not an object": (
        "smartmodule", "x@1", '"\\ud800"', "specJson must be a JSON object, not str"),
    "specJson not JSON": (
        "smartmodule", "x@1", "[1,", "specJson is not JSON: Expecting value: line 1 column 4 (char 3)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_spec_the_sc_cannot_read_is_invalid_argument_in_one_line(case: str, cluster: DataPlaneCluster) -> None:
    kind, name, spec_json, message = CASES[case]
    code, got = _put(cluster, kind, name, spec_json)
    assert (code, got) == ("invalidArgument", message)


def test_the_sc_still_serves_after_bad_specs(cluster: DataPlaneCluster) -> None:
    deep_but_allowed = {"a": [[[["x"]]]], "n": int("9" * L.SPEC_JSON_DIGITS_MAX)}
    for case in CASES:  # every bad spec once more, then a good call
        kind, name, spec_json, _ = CASES[case]
        assert _put(cluster, kind, name, spec_json)[0] == "invalidArgument"
    code, message = _put(cluster, "smartmodule", "y@1", json.dumps(deep_but_allowed))
    assert "internal" not in code and "Error" not in message, (code, message)
