"""The redaction of `kolk cluster diagnostics` (core/observe/diagnostics.py), pure: a secret
hidden anywhere in random JSON or text never survives, nor does a private key's PEM block;
values under sensitive names are gone and paths and sizes stay; a node's answer keeps within
its byte limit by dropping its oldest log lines first (docs/operations.md "Diagnostics")."""

from __future__ import annotations

import dataclasses
import enum
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.observe.diagnostics import (REDACTED, SECRET_CHARS_MIN, SHORT_MARKER, Diagnostics, NodeFacts, build_answer,
                                      key_file_lines, redact_text, redact_value, render_json, sensitive_name,
                                      settings_of, usable_secrets)
from kolk.security.certs import create_ca
from kolk.security.tls import TlsConfig

SECRETS = st.one_of(
    st.text(min_size=SECRET_CHARS_MIN, max_size=48),
    st.text(alphabet="0123456789", min_size=SECRET_CHARS_MIN, max_size=20),  # can hide in a number
    st.sampled_from(["<redacted>x", "<redacted>", "redacted>", "d><redacted><", "aaaaaaaa"]),  # the marker's own text
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [json.dumps(value)]


def _plant(value: Any, secret: str, where: int, data: Any) -> Any:
    """``value`` with ``secret`` put into one of its strings, keys or lists, or beside it."""
    if isinstance(value, dict) and value and where % 3 == 0:
        k = data.draw(st.sampled_from(sorted(value)))
        return {**value, f"{k[:3]}{secret}{k[3:]}": value[k]}
    if isinstance(value, dict) and value and where % 3 == 1:
        k = data.draw(st.sampled_from(sorted(value)))
        return {**value, k: _plant(value[k], secret, where // 3, data)}
    if isinstance(value, list) and value:
        i = data.draw(st.integers(0, len(value) - 1))
        return value[:i] + [_plant(value[i], secret, where // 2, data)] + value[i + 1:]
    if isinstance(value, str):
        i = data.draw(st.integers(0, len(value)))
        return value[:i] + secret + value[i:]
    if secret.isdigit():
        return int("1" + secret)
    return [value, secret]


@settings(max_examples=300, deadline=None)
@given(secret=SECRETS, value=JSON, where=st.integers(0, 1000), data=st.data())
def test_a_secret_planted_in_json_never_survives(secret: str, value: Any, where: int, data: Any) -> None:
    planted = _plant(value, secret, where, data)
    secrets = usable_secrets([secret])
    assert any(secret in s for s in _strings(planted))
    out = render_json(planted, secrets)
    assert secret not in out
    for s in _strings(redact_value(planted, secrets)):
        assert secret not in s


@settings(max_examples=300, deadline=None)
@given(secret=SECRETS, pieces=st.lists(st.text(max_size=30), min_size=1, max_size=6))
def test_a_secret_planted_in_text_never_survives(secret: str, pieces: list[str]) -> None:
    text = secret.join(pieces) + secret
    assert secret not in redact_text(text, usable_secrets([secret]))


def test_replacing_cannot_build_the_secret_again() -> None:
    # "<redacted>x" in "<redacted>xx": the first replacement makes the secret anew.
    for secret, text in [("<redacted>x", "<redacted>xx"), ("<redacted>", "a <redacted> b"),
                         ("redacted>", "redacted>redacted>")]:
        out = redact_text(text, [secret])
        assert secret not in out, (secret, text, out)
    assert redact_value({"password": "p"}, ["<redacted>"]) == {"password": SHORT_MARKER}


def test_a_number_whose_digits_hold_the_secret_is_replaced() -> None:
    secret = "1234567890123456"
    assert redact_value({"n": 9_1234567890123456_7, "m": 42}, [secret]) == {"n": REDACTED, "m": 42}


def test_secrets_too_short_to_search_for_are_left_alone() -> None:
    assert usable_secrets(["short", None, "", "long-enough-secret", "long-enough-secret"]) == ("long-enough-secret",)
    assert redact_text("a short text", usable_secrets(["short"])) == "a short text"


# ---------------------------------------------------------------- private keys


def _key_pem() -> str:
    return create_ca("redaction test CA")[1].decode()


@pytest.mark.parametrize("kind", ["PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY", "ENCRYPTED PRIVATE KEY",
                                  "OPENSSH PRIVATE KEY"])
def test_pem_private_key_blocks_are_taken_out(kind: str) -> None:
    pem = _key_pem().replace("BEGIN PRIVATE KEY", f"BEGIN {kind}").replace("END PRIVATE KEY", f"END {kind}")
    lines = key_file_lines(pem)
    assert lines
    for text in (f"before\n{pem}after", json.dumps({"rack": pem}), f"cut short: {pem[:len(pem) // 2]}"):
        out = redact_text(text)
        assert "PRIVATE KEY-----" not in out and REDACTED in out
        assert not any(line in out for line in lines if line in text)
    out = render_json({"a": [pem, {"b": f"x{pem}y"}]})
    assert not any(line in out for line in lines)
    assert "before" in redact_text(f"before\n{pem}after") and "after" in redact_text(f"before\n{pem}after")


@settings(max_examples=50, deadline=None)
@given(value=JSON, data=st.data())
def test_a_key_planted_in_json_never_survives(value: Any, data: Any) -> None:
    pem = _PEM
    out = render_json(_plant(value, pem, data.draw(st.integers(0, 1000)), data))
    assert not any(line in out for line in key_file_lines(pem))


_PEM = _key_pem()


# ---------------------------------------------------------------- names and settings


@pytest.mark.parametrize("name,sensitive", [
    ("secret", True), ("clusterSecret", True), ("cluster_secret", True), ("password", True), ("auth_token", True),
    ("key", True), ("api_key", True), ("apiKey", True), ("private_key", True), ("privateKey", True),
    ("credentials", True), ("key_sha256", True), ("Authorization", True),
    ("key_file", False), ("secret_file", False), ("cleaner_key_map_bytes", False), ("private_address", False),
    ("keepalive_ms", False), ("monkey", False), ("tls", False), ("public_address", False), ("", False),
])
def test_sensitive_names(name: str, sensitive: bool) -> None:
    assert sensitive_name(name) is sensitive


class _Mode(enum.Enum):
    FAST = "fast"


@dataclasses.dataclass
class _Inner:
    token: str = "inner-token-value"
    depth: int = 3


@dataclasses.dataclass
class _Config:
    node_id: int = 1
    secret: str = "the-cluster-secret-value"
    tls: TlsConfig = dataclasses.field(default_factory=lambda: TlsConfig("/p/ca.crt", "/p/n.crt", "/p/n.key"))
    on_sync: Any = print
    blob: bytes = b"\x00" * 10
    mode: _Mode = _Mode.FAST
    peers: dict = dataclasses.field(default_factory=lambda: {1: ("a", "b"), "password": "pw"})
    inner: _Inner = dataclasses.field(default_factory=_Inner)


def test_settings_show_paths_and_values_never_secrets_or_contents() -> None:
    assert settings_of(_Config()) == {
        "node_id": 1, "secret": REDACTED,
        "tls": {"ca_file": "/p/ca.crt", "cert_file": "/p/n.crt", "key_file": "/p/n.key"},
        "on_sync": "<builtin_function_or_method>", "blob": "<10 bytes>", "mode": "fast",
        "peers": {"1": ["a", "b"], "password": REDACTED}, "inner": {"token": REDACTED, "depth": 3}}


# ---------------------------------------------------------------- the answer and its limit

FACTS = NodeFacts("spu-1", 42, "3.11.7", "Linux", {"kolk": "0.1.0"}, 1000.0)


def test_the_answer_keeps_the_newest_lines_within_its_limit() -> None:
    lines = [f"line {i} " + "x" * 1000 for i in range(2000)]
    d = build_answer(FACTS, 1010.0, {"secret": "s"}, lines, "m 1\n", [], [], 200_000, 5000)
    text = d.to_json()
    assert len(text) <= 200_000
    assert d.log_lines == lines[-len(d.log_lines):] and 150 <= len(d.log_lines) < 200
    assert any("log cut to the newest" in n for n in d.info["notes"])
    assert d.info["uptime_s"] == 10.0 and d.info["settings"] == {"secret": REDACTED}
    assert Diagnostics.from_json(text) == d


def test_lines_max_and_metrics_cut() -> None:
    d = build_answer(FACTS, 1000.0, {}, [f"l{i}" for i in range(100)], "", [], [], 1 << 20, 10)
    assert d.log_lines == [f"l{i}" for i in range(90, 100)] and d.info["notes"] == []
    big = "".join(f"kolk_x{{p=\"{i}\"}} {i}\n" for i in range(20_000))
    d = build_answer(FACTS, 1000.0, {}, ["only"], big, [], [], 100_000, 10)
    assert len(d.to_json()) <= 100_000 and d.metrics.endswith("\n") and big.startswith(d.metrics)
    assert any("metrics cut" in n for n in d.info["notes"])


def test_the_answer_is_redacted() -> None:
    secret = "cluster-secret-0123456789"
    d = build_answer(FACTS, 1000.0, {"data_dir": f"/x/{secret}"}, [f"hello {secret}"], f"m{{a=\"{secret}\"}} 1\n",
                     [f"note {secret}"], [secret], 1 << 20, 10)
    assert secret not in d.to_json()
    assert d.log_lines == [f"hello {REDACTED}"]


@pytest.mark.parametrize("text,why", [
    ("[]", "not an object"), ('"x"', "not an object"), ("{}", "lacks info"),
    ('{"info": {}, "log_lines": "x", "metrics": ""}', "lacks info"),
    ('{"info": {}, "log_lines": [], "metrics": 3}', "lacks info"),
    ('{"info": [], "log_lines": [], "metrics": ""}', "lacks info"),
])
def test_an_answer_that_is_not_diagnostics_is_refused(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        Diagnostics.from_json(text)


def test_an_answer_that_is_not_json_is_refused() -> None:
    with pytest.raises(ValueError):
        Diagnostics.from_json("not json")
