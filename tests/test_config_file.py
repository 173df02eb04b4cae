"""Config files for ``kolk sc`` / ``kolk spu`` and the addresses they are given (issue 22, item 2).

The parser (core/node/config_file.py) is pure: text and an argparse parser in, argv or one
error line out; most tests call it directly. The file checks are real files of each kind
(missing, a directory, a FIFO, oversize, world-writable). A few tests start real ``kolk sc``
and ``kolk spu`` processes from config files: tests/test_config_file_start.py.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kolk.cli.args import OneLineParser  # noqa: E402
from kolk.node.config_file import (CONFIG_BYTES_MAX, ConfigFileError, file_argv, keys_of,  # noqa: E402
                                   read_config_text, with_config_file)
from kolk.sc import main as sc_main  # noqa: E402
from kolk.spu import main as spu_main  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples" / "config"


def parser_of(command: str) -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"kolk {command}")
    (sc_main if command == "sc" else spu_main).add_arguments(p)
    return p


def sample(key: Any) -> Any:
    """A value of the right type for a key that its flag accepts."""
    action = key.action
    if key.kind == "switch":
        return True
    if key.kind == "list":
        return ["2=127.0.0.1:7001/127.0.0.1:9004", "3=127.0.0.1:7002/127.0.0.1:9005"] \
            if key.name == "peer" else ["retention_ms=1000", "segment_bytes=1048576"]
    if action.choices:
        return list(action.choices)[-1]
    if key.kind == "int":
        return (action.default or 0) + 3
    if key.kind == "float":
        return 2.5
    return f"value-of-{key.name}"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)  # strings, integers, floats and arrays of strings are the same in TOML


# ---------------------------------------------------------------- every key


@pytest.mark.parametrize("command", ["sc", "spu"])
def test_every_key_gives_what_its_flag_gives(command: str) -> None:
    """A file with every key parses to the Namespace the same flags on the command line give."""
    parser = parser_of(command)
    keys = keys_of(parser)
    assert {"id", "data-dir", "tls-key", "log-level"} <= set(keys) and "config" not in keys and "help" not in keys
    values = {name: sample(key) for name, key in keys.items()}
    text = "".join(f"{name} = {toml_value(v)}\n" for name, v in values.items())
    from_file = parser.parse_args(file_argv(text, "all.toml", parser))
    flags: list[str] = []
    for name, v in values.items():
        if keys[name].kind == "switch":
            flags.append(f"--{name}")
        else:
            for item in (v if isinstance(v, list) else [v]):
                flags += [f"--{name}", str(item)]
    assert from_file == parser.parse_args(flags)
    for name, v in values.items():
        assert getattr(from_file, keys[name].action.dest) == v, name



TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)  # TOML strings hold these unescaped


def value_of(key: Any) -> st.SearchStrategy:
    if key.kind == "switch":
        return st.booleans()
    if key.kind == "list":
        return st.lists(TEXT, max_size=3)
    if key.action.choices:
        return st.sampled_from(list(key.action.choices))
    return st.integers(-(2**63), 2**63 - 1) if key.kind == "int" else TEXT


@st.composite
def settings_split(draw: Any, command: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Some keys with values for the file and some (maybe the same keys) for the command line."""
    keys = keys_of(parser_of(command))
    names = sorted(keys)
    required = [n for n in names if keys[n].action.required]  # in the file, so the parse can succeed
    in_file = sorted(set(draw(st.lists(st.sampled_from(names), unique=True, max_size=8))) | set(required))
    on_line = draw(st.lists(st.sampled_from(names), unique=True, max_size=4))
    return ({n: draw(value_of(keys[n])) for n in in_file}, {n: draw(value_of(keys[n])) for n in on_line})


@pytest.mark.parametrize("command", ["sc", "spu"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_the_command_line_wins_over_the_file_for_any_values(command: str, data: Any) -> None:
    """Property: for any keys and values split between a file and the command line, each flag
    ends as the command line gives it, else as the file gives it, else its default."""
    parser = parser_of(command)
    keys = keys_of(parser)
    in_file, on_line = data.draw(settings_split(command))
    text = "".join(f"{toml_value(n)} = {toml_value(v)}\n" for n, v in in_file.items())
    argv: list[str] = []
    for n, v in on_line.items():
        if keys[n].kind == "switch":
            argv += [f"--{n}"] if v else []
        else:
            argv += [f"--{n}={item}" for item in (v if isinstance(v, list) else [v])]
    given = frozenset(f"--{n}" for n, v in on_line.items() if v is not False)
    args, _ = parser.parse_known_args(file_argv(text, "f.toml", parser, given) + argv)
    for n, key in keys.items():
        expected = key.action.default
        for source in (in_file, on_line):
            if n in source and not (key.kind == "switch" and source[n] is False):
                expected = source[n]
        assert getattr(args, key.action.dest) == expected, n


def test_every_flag_of_both_commands_is_in_the_docs() -> None:
    """docs/configuration.md lists every key of both files, so the page cannot drift from the flags."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for command in ("sc", "spu"):
        missing = [k for k in keys_of(parser_of(command)) if f"`{k}`" not in doc]
        assert not missing, f"docs/configuration.md lacks these kolk {command} keys: {missing}"


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_the_docs_example_files_parse(name: str) -> None:
    """The 3-SC, 5-SPU example of the docs: every file parses, with TLS, and SPUs name racks."""
    command = "sc" if name.startswith("sc") else "spu"
    parser = parser_of(command)
    path = str(EXAMPLES / name)
    args = parser.parse_args(file_argv(read_config_text(path), path, parser))
    assert args.id == int(re.sub(r"\D", "", name)) and args.tls_ca and args.tls_cert and args.tls_key
    if command == "sc":
        assert sorted(int(p.split("=")[0]) for p in args.peer) == sorted({1, 2, 3} - {args.id})
    else:
        assert args.rack in ("rack-a", "rack-b", "rack-c") and len(args.sc.split(",")) == 3


def test_the_docs_example_spreads_five_spus_over_three_racks() -> None:
    racks = []
    for i in range(1, 6):
        path = str(EXAMPLES / f"spu{i}.toml")
        racks.append(parser_of("spu").parse_args(file_argv(read_config_text(path), path, parser_of("spu"))).rack)
    assert sorted(set(racks)) == ["rack-a", "rack-b", "rack-c"]


# ---------------------------------------------------------------- bad files, each its own line


def fault(text: str, command: str = "sc") -> str:
    with pytest.raises(ConfigFileError) as e:
        file_argv(text, "/etc/kolk/x.toml", parser_of(command))
    assert "\n" not in str(e.value)
    return str(e.value)


def test_an_unknown_key_is_named_with_the_file_and_line() -> None:
    line = fault('id = 1\n\n  "data_dir" = "/d"\n')
    assert line.startswith("/etc/kolk/x.toml:3: unknown key 'data_dir' (did you mean 'data-dir'? known keys: id, "), line


def test_an_unknown_key_with_a_newline_is_still_one_line() -> None:
    assert fault('"a\\nb" = 1\n').startswith("/etc/kolk/x.toml: unknown key 'a\\nb' (known keys: id, ")


def test_config_and_help_are_not_keys() -> None:
    assert fault('id = 1\nconfig = "other.toml"\n') == "/etc/kolk/x.toml:2: 'config' cannot be set in a config file"


@pytest.mark.parametrize("text, why", [
    ('id = "1"', "id: must be a whole number (a TOML integer, without quotes), not '1'"),
    ("id = true", "id: must be a whole number (a TOML integer, without quotes), not true"),
    ("id = 1.5", "id: must be a whole number (a TOML integer, without quotes), not 1.5"),
    ("data-dir = 5", "data-dir: must be a string (in quotes), not 5"),
    ('peer = "2=a:1/b:2"', "peer: must be an array of strings, such as [\"a\", \"b\"], not '2=a:1/b:2'"),
    ("peer = [2]", "peer: must be an array of strings, such as [\"a\", \"b\"], not [2]"),
    ('insecure-allow-plaintext-policy = "yes"', "insecure-allow-plaintext-policy: must be true or false, not 'yes'"),
    ('log-format = "xml"', "log-format: 'xml' is not one of text, json"),
    ("heartbeat-timeout-ms = 1979-05-27", "heartbeat-timeout-ms: must be a whole number (a TOML integer, without "
                                          "quotes), not datetime.date(1979, 5, 27)"),
], ids=["int-as-string", "int-as-bool", "int-as-float", "string-as-int", "list-as-string", "list-of-ints",
        "switch-as-string", "not-a-choice", "date"])
def test_a_value_of_the_wrong_type_is_named(text: str, why: str) -> None:
    assert fault(f"\n{text}\n") == f"/etc/kolk/x.toml:2: {why}"


def test_a_value_out_of_a_flags_range_is_refused_by_the_flags_own_check() -> None:
    parser = OneLineParser(prog="kolk x")
    from kolk.cli.args import int_in
    parser.add_argument("--n", type=int_in(5, 10))
    with pytest.raises(ConfigFileError, match=r"^f.toml:1: n: 11 is out of range: 5 to 10$"):
        file_argv("n = 11\n", "f.toml", parser)
    with pytest.raises(ConfigFileError, match=r"^f.toml:1: n: must be a whole number \(a TOML integer"):
        file_argv('n = "7"\n', "f.toml", parser)
    assert file_argv("n = 7\n", "f.toml", parser) == ["--n=7"]


@pytest.mark.parametrize("text, line", [("[tls]\nca = 'x'\n", 1), ("id = 1\ntls = { ca = 'x' }\n", 2),
                                        ("id = 1\ntls.ca = 'x'\n", 2), ("[[tls]]\nca = 'x'\n", 1)],
                         ids=["table", "inline-table", "dotted-key", "array-of-tables"])
def test_a_nested_table_is_refused_naming_it(text: str, line: int) -> None:
    assert fault(text).startswith(f"/etc/kolk/x.toml:{line}: 'tls' is a table; a config file is one flat table")


def test_a_syntax_error_is_reported_as_tomllib_reports_it_with_the_file() -> None:
    assert fault("id = 1\ndata-dir = /d\n") == "/etc/kolk/x.toml: Invalid value (at line 2, column 12)"
    assert fault("id = 1\nid = 2\n") == "/etc/kolk/x.toml: Cannot overwrite a value (at line 2, column 7)"


def test_a_switch_set_to_false_is_its_default() -> None:
    parser = parser_of("sc")
    assert file_argv("insecure-allow-plaintext-policy = false\n", "f", parser) == []


# ---------------------------------------------------------------- the file itself


def write(path: pathlib.Path, text: str, mode: int = 0o600) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_a_missing_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigFileError, match=f"^{path}: cannot read the config file: no such file or directory$"):
        read_config_text(str(path))


def test_a_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigFileError, match=f"^{tmp_path}: the config file is a directory, not a file$"):
        read_config_text(str(tmp_path))


def test_a_fifo_is_refused_without_blocking(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "fifo.toml"
    os.mkfifo(path, 0o600)  # nobody writes it: opening it for reading would block
    with pytest.raises(ConfigFileError, match=r"is not a regular file \(a FIFO, socket or device\)$"):
        read_config_text(str(path))


def test_an_oversize_file(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path / "big.toml", "#" * CONFIG_BYTES_MAX + "\n")
    with pytest.raises(ConfigFileError, match=f"is {CONFIG_BYTES_MAX + 1} bytes, more than the {CONFIG_BYTES_MAX}"):
        read_config_text(path)
    assert read_config_text(write(tmp_path / "max.toml", "#" * (CONFIG_BYTES_MAX - 1) + "\n")).startswith("#")


def test_a_world_writable_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path / "open.toml", "id = 1\n", 0o666)
    with pytest.raises(ConfigFileError, match=r"writable by anyone \(mode 666\).*chmod o-w"):
        read_config_text(path)
    # Read by another user (0644, as root's /etc/kolk/sc.toml or a ConfigMap) and group-writable are fine.
    assert read_config_text(write(tmp_path / "shared.toml", "id = 1\n", 0o664)) == "id = 1\n"


def test_a_file_that_is_not_utf8(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'rack = "K\xf6ln"\n')
    with pytest.raises(ConfigFileError, match=r"is not UTF-8 text \(byte 9\)$"):
        read_config_text(str(path))


# ---------------------------------------------------------------- the command line and the file


def test_a_flag_overrides_the_file_and_a_list_replaces_it(tmp_path: pathlib.Path) -> None:
    path = write(tmp_path / "sc.toml", 'id = 1\ndata-dir = "/d"\nraft = "h:1"\nadmin = "h:2"\n'
                                       'heartbeat-timeout-ms = 5000\npeer = ["2=a:1/a:2", "3=b:1/b:2"]\n')
    parser = parser_of("sc")
    args = parser.parse_args(with_config_file(["--config", path, "--heartbeat-timeout-ms", "7000"], parser))
    assert (args.heartbeat_timeout_ms, args.peer, args.data_dir) == (7000, ["2=a:1/a:2", "3=b:1/b:2"], "/d")
    args = parser.parse_args(with_config_file(["--peer=4=c:1/c:2", f"--config={path}"], parser))
    assert args.peer == ["4=c:1/c:2"] and args.heartbeat_timeout_ms == 5000


def test_the_id_from_the_command_line_and_the_rest_from_the_file(tmp_path: pathlib.Path) -> None:
    """Kubernetes passes the pod's ordinal as --id; the shared ConfigMap has everything else."""
    path = write(tmp_path / "spu.toml", 'sc = "sc:9003"\ndata-dir = "/d"\npublic = "spu:9010"\n')
    parser = parser_of("spu")
    args = parser.parse_args(with_config_file(["--id", "4", "--config", path], parser))
    assert (args.id, args.sc, args.public) == (4, "sc:9003", "spu:9010")
