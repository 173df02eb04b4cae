"""The authoring kit (issue 18, Build items 4 and 5): ``kolk smartmodule generate`` writes a
module of every kind in every language that builds and passes ``kolk smartmodule test``;
``test`` takes JSON lines (keys, null values, headers, timestamps, bytes that are not UTF-8),
runs a whole chain with each stage's own parameters, shows bytes as text or hex, and every
bad input is refused with one line naming what (and on which line) was wrong. The input
parser's own cases are in test_smartmodule_testinput.py.

Everything runs through the CLI's real ``main`` (in-process, for speed; one test goes through
``python -m kolk``), the real clang and the real engine.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import subprocess
import sys

import pytest

from kolk.cli.main import main
from kolk.smartmodule import testinput
from kolk.smartmodule.abi import KINDS

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "smartmodule" / "examples"
TEMPLATES = ROOT / "smartmodule" / "templates"
SUFFIX = {"c": ".c", "rust": ".rs", "as": ".ts", "wat": ".wat"}
LANGS = sorted(p.name for p in TEMPLATES.iterdir() if p.is_dir())  # every language delivered


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``kolk smartmodule ARGS``: (status, stdout, stderr)."""
    try:
        status = main(["smartmodule", *args])
    except SystemExit as e:  # argparse refusals
        status = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


def refused(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The one stderr line of a refused command (status 1 or 2, nothing on stdout)."""
    status, out, err = cli(capsys, *args)
    assert status in (1, 2), (status, out, err)
    assert out == "" and "Traceback" not in err, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def write(path: pathlib.Path, lines: list) -> str:
    """A JSON-lines file of ``lines`` (a str is a bare value line); its path."""
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return str(path)


# ---------------------------------------------------------------- generate

# What each C and WAT template gives for the generated test records (offset, value), so the
# scaffold is known to do what its comment says. Record 3 is a bare string line; record 2 has
# a null key and value; record 4's value is the bytes ff 00 fe.
RECORDS_IN = 7
EXPECTED = {
    ("c", "filter"): [(0, "temperature 21"), (1, "humidity 40"), (3, "a bare JSON string is a value"),
                      (4, {"hex": "ff00fe"}), (5, "temperature 23"), (6, "17")],
    ("c", "map"): [(0, "TEMPERATURE 21"), (1, "HUMIDITY 40"), (2, None), (3, "A BARE JSON STRING IS A VALUE"),
                   (4, {"hex": "ff00fe"}), (5, "TEMPERATURE 23"), (6, "17")],
    ("c", "filter_map"): [(0, "sensor-1=temperature 21"), (1, "sensor-2=humidity 40"),
                          (4, {"hex": b"sensor-1=\xff\x00\xfe".hex()}), (5, "sensor-1=temperature 23"),
                          (6, "sensor-3=17")],
    ("c", "array_map"): [(0, "temperature"), (0, "21"), (1, "humidity"), (1, "40"), (3, "a"), (3, "bare"),
                         (3, "JSON"), (3, "string"), (3, "is"), (3, "a"), (3, "value"), (4, {"hex": "ff00fe"}),
                         (5, "temperature"), (5, "23"), (6, "17")],
    ("c", "aggregate"): [(i, str(i + 1)) for i in range(7)],
    ("wat", "filter"): [(0, "temperature 21"), (1, "humidity 40"), (3, "a bare JSON string is a value"),
                        (4, {"hex": "ff00fe"}), (5, "temperature 23"), (6, "17")],
    ("wat", "map"): [(0, "TEMPERATURE 21"), (1, "HUMIDITY 40"), (2, None), (3, "A BARE JSON STRING IS A VALUE"),
                     (4, {"hex": "ff00fe"}), (5, "TEMPERATURE 23"), (6, "17")],
    ("wat", "filter_map"): [(0, "TEMPERATURE 21"), (1, "HUMIDITY 40"), (3, "A BARE JSON STRING IS A VALUE"),
                            (4, {"hex": "ff00fe"}), (5, "TEMPERATURE 23"), (6, "17")],
    ("wat", "array_map"): [(o, v) for o, v in [(0, "temperature 21"), (1, "humidity 40"), (2, None),
                                               (3, "a bare JSON string is a value"), (4, {"hex": "ff00fe"}),
                                               (5, "temperature 23"), (6, "17")] for _ in range(2)],
    ("wat", "aggregate"): [(i, str(i + 1)) for i in range(7)],
}
EXPECTED.update({("as", kind): EXPECTED[("c", kind)] for kind in KINDS})  # the AssemblyScript templates are the C ones


def test_every_language_has_a_template_for_every_kind() -> None:
    assert {"c", "wat"} <= set(LANGS)
    for lang in LANGS:
        assert sorted(p.name for p in (TEMPLATES / lang).iterdir()) == sorted(k + SUFFIX[lang] for k in KINDS), lang


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("kind", KINDS)
def test_a_generated_module_builds_and_passes_its_test(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path,
                                                       lang: str, kind: str) -> None:
    """generate writes NAME.<ext> and NAME.jsonl and prints two commands; run as printed, they
    build the module and test it on its records."""
    status, out, err = cli(capsys, "generate", kind, "sensor_probe", "--lang", lang, "--dir", str(tmp_path / "m"))
    assert status == 0, err
    source = tmp_path / "m" / f"sensor_probe{SUFFIX[lang]}"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == sorted([source.name, "sensor_probe.jsonl"])
    text = source.read_text()
    assert "{{NAME}}" not in text and "sensor_probe" in text
    commands = [line.strip() for line in out.splitlines() if line.startswith("  kolk smartmodule ")]
    assert [c.split()[:3] for c in commands] == [["kolk", "smartmodule", "build"], ["kolk", "smartmodule", "test"]]
    for command in commands:
        status, out, err = cli(capsys, *shlex.split(command)[2:], *(["--json"] if "test" in command else []))
        assert status == 0, (command, err)
    result = json.loads(out)
    assert result["records_in"] == RECORDS_IN and [s["kind"] for s in result["stages"]] == [kind]
    if (lang, kind) in EXPECTED:
        assert [(r["offset"], r["value"]) for r in result["records"]] == EXPECTED[(lang, kind)]
    else:  # a language whose templates this file does not know in detail: it ran and gave records
        assert result["records_out"] >= 1
    if kind == "aggregate":
        assert "accumulator" in result["stages"][0]


def test_generate_through_the_real_command(tmp_path: pathlib.Path) -> None:
    """`python -m kolk`: the printed commands work as a user would paste them."""
    def kolk(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kolk", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)

    done = kolk("smartmodule", "generate", "filter", "first")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "wrote first.c (a filter in c) and first.jsonl (test records); next:",
        "  kolk smartmodule build first.c", "  kolk smartmodule test first.wasm --input first.jsonl"]
    assert kolk(*shlex.split(done.stdout.splitlines()[1])[1:]).returncode == 0
    done = kolk(*shlex.split(done.stdout.splitlines()[2])[1:], "-p", "contains=humid")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ['1  1700000001000  key="sensor-2"  value="humidity 40"']
    assert done.stderr == "first.wasm (filter): 7 record(s) in, 1 out\n"


def test_generate_json_names_the_files_and_commands(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: pathlib.Path) -> None:
    status, out, _ = cli(capsys, "generate", "map", "m1", "--lang", "wat", "--dir", str(tmp_path), "--json")
    assert status == 0
    assert json.loads(out) == {"kind": "map", "lang": "wat", "files": [str(tmp_path / "m1.wat"),
                                                                      str(tmp_path / "m1.jsonl")],
                               "next": [f"kolk smartmodule build {tmp_path / 'm1.wat'}",
                                        f"kolk smartmodule test {tmp_path / 'm1.wasm'} --input {tmp_path / 'm1.jsonl'}"]}


@pytest.mark.parametrize("args, expected", [
    (["generate", "reduce", "m"], "unknown kind 'reduce': one of filter, map, filter_map, array_map, aggregate"),
    (["generate", "filter", "m", "--lang", "go"], "unknown language 'go': one of c, rust, as, wat"),
    (["generate", "filter", "9lives"], "module name '9lives' is not a name"),
    (["generate", "filter", "my-module"], "module name 'my-module' is not a name"),
    (["generate", "filter", "a.b"], "module name 'a.b' is not a name"),
    (["generate", "filter", ""], "module name '' is not a name"),
    (["generate", "filter", "x" * 65], f"module name '{'x' * 65}' is not a name"),
    (["generate", "filter", "../up"], "module name '../up' is not a name"),
])
def test_generate_refuses_a_bad_kind_language_or_name(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path,
                                                      args: list[str], expected: str) -> None:
    line = refused(capsys, *args, "--dir", str(tmp_path))
    assert line.startswith("kolk smartmodule generate: ") and expected in line
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("existing", ["m.c", "m.jsonl"])
def test_generate_never_overwrites_and_then_writes_nothing(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: pathlib.Path, existing: str) -> None:
    (tmp_path / existing).write_text("mine")
    line = refused(capsys, "generate", "filter", "m", "--dir", str(tmp_path))
    assert line == (f"kolk smartmodule generate: {tmp_path / existing} already exists: choose another NAME or --dir "
                    "(nothing was written)")
    assert [p.name for p in tmp_path.iterdir()] == [existing] and (tmp_path / existing).read_text() == "mine"


def test_generate_refuses_a_dir_that_is_a_file(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    (tmp_path / "f").write_text("")
    line = refused(capsys, "generate", "filter", "m", "--dir", str(tmp_path / "f"))
    assert line == f"kolk smartmodule generate: {tmp_path / 'f'} is not a directory"


def test_generate_says_when_a_language_lacks_a_kind(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An installation with a partial set of templates names the missing file."""
    from kolk.cli import smartmodule_generate

    (tmp_path / "templates" / "c").mkdir(parents=True)
    monkeypatch.setattr(smartmodule_generate, "_templates_dir", lambda: tmp_path / "templates")
    line = refused(capsys, "generate", "map", "m", "--dir", str(tmp_path / "out"))
    assert line == (f"kolk smartmodule generate: there is no c template for map in this installation "
                    f"({tmp_path / 'templates' / 'c' / 'map.c'} is missing)")


# ---------------------------------------------------------------- test: a whole chain, JSON lines in

def test_a_chain_runs_in_order_each_stage_with_its_own_parameters(capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: pathlib.Path) -> None:
    records = write(tmp_path / "in.jsonl", [
        {"key": "k1", "value": '{"n": 1, "fruit": "apple"}', "timestamp": 1000, "headers": {"h": "v", "z": None}},
        {"key": None, "value": '{"n": 2, "fruit": "pear"}', "timestamp": 2000},
        '{"n": 3, "fruit": "apple pie"}',
        {"value": None, "timestamp": 4000},
    ])
    status, out, err = cli(capsys, "test", str(EXAMPLES / "contains.c"), "-p", "needle=apple",
                           "--module", str(EXAMPLES / "json_field.c"), "-p", "field=n", "--input", records, "--json")
    assert status == 0, err
    result = json.loads(out)
    assert result["stages"] == [
        {"module": "contains.c [stage 1]", "kind": "filter", "params": {"needle": "apple"}},
        {"module": "json_field.c [stage 2]", "kind": "map", "params": {"field": "n"}}]
    assert [(r["offset"], r["key"], r["value"], r["headers"]) for r in result["records"]] == [
        (0, "k1", "1", [["h", "v"], ["z", None]]), (2, None, "3", [])]
    assert result["records"][0]["timestamp"] == 1000 and (result["records_in"], result["records_out"]) == (4, 2)


def test_only_module_options_make_a_chain_too(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    records = write(tmp_path / "in.jsonl", ["one two", "three"])
    status, out, err = cli(capsys, "test", "--module", str(EXAMPLES / "split_lines.c"), "--module",
                           str(EXAMPLES / "count_per_key.c"), "--input", records)
    assert status == 0, err
    # split_lines gives each value once (no newlines); count_per_key counts the null key
    assert [line.split("  ", 2)[2] for line in out.splitlines()[:2]] == ['key=null  value="null=1"',
                                                                        'key=null  value="null=2"']
    assert out.splitlines()[2].startswith("accumulator of count_per_key.c [stage 2]: 0xffffffff0200000000000000")
    assert err == "split_lines.c [stage 1] (array_map) -> count_per_key.c [stage 2] (aggregate): 2 record(s) in, 2 out\n"


def test_keys_values_and_headers_are_shown_as_text_or_hex(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: pathlib.Path) -> None:
    records = write(tmp_path / "in.jsonl", [
        {"key": {"base64": "/w=="}, "value": "caf\u00e9", "headers": [["b", {"hex": "00ff"}], ["b", "t\tx"]],
         "timestamp": 7}])
    filter_all = str(EXAMPLES / "contains.c")
    shown = {}
    for mode in ("auto", "utf8", "hex"):
        status, out, err = cli(capsys, "test", filter_all, "-p", "needle=", "--input", records, "--bytes", mode)
        assert status == 0, err
        shown[mode] = out.strip()
    assert shown["auto"] == '0  7  key=0xff  value="café"  headers={b=0x00ff, b="t\\tx"}'
    assert shown["utf8"] == '0  7  key="\ufffd"  value="café"  headers={b="\\u0000\ufffd", b="t\\tx"}'
    assert shown["hex"] == "0  7  key=0xff  value=0x636166c3a9  headers={b=0x00ff, b=0x740978}"
    status, out, _ = cli(capsys, "test", filter_all, "-p", "needle=", "--input", records, "--json")
    assert json.loads(out)["records"] == [{"offset": 0, "timestamp": 7, "key": {"hex": "ff"}, "value": "café",
                                           "headers": [["b", {"hex": "00ff"}], ["b", "t\tx"]]}]


def test_json_output_records_are_test_input_again(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    """--json shows bytes the way test input writes them: feeding the records back gives them again."""
    first = write(tmp_path / "in.jsonl", [
        {"key": "a", "value": {"hex": "00fffe"}, "headers": {"x": None}, "timestamp": 5},
        {"key": None, "value": None, "timestamp": 6}, {"value": "\u00e9\n", "timestamp": 9}])
    module = str(EXAMPLES / "split_lines.c")
    _, out, _ = cli(capsys, "test", module, "--input", first, "--json")
    again = write(tmp_path / "again.jsonl", [{k: r[k] for k in ("key", "value", "headers", "timestamp")}
                                             for r in json.loads(out)["records"]])
    _, out2, _ = cli(capsys, "test", module, "--input", again, "--json")
    strip = [{k: v for k, v in r.items() if k != "offset"} for r in json.loads(out)["records"]]
    assert [{k: v for k, v in r.items() if k != "offset"} for r in json.loads(out2)["records"]] == strip
    assert [r["value"] for r in strip] == [{"hex": "00fffe"}, "\u00e9"]


def test_the_module_own_message_is_in_the_error(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    """A failing record shows the engine's error and the module's kolk_error message."""
    records = write(tmp_path / "in.jsonl", ['{"f": 1}', '{"f": 1,}'])
    line = refused(capsys, "test", str(EXAMPLES / "json_field.c"), "-p", "field=f", "--input", records)
    assert line == ("kolk smartmodule test: SmartModule json_field.c (map) failed at offset 1: recordError: "
                    "map refused the record: JSON: expected a string key at byte 8")


def test_a_stage_that_refuses_its_parameters_is_named(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: pathlib.Path) -> None:
    records = write(tmp_path / "in.jsonl", ["x"])
    line = refused(capsys, "test", str(EXAMPLES / "contains.c"), "-p", "needle=x", "--module",
                   str(EXAMPLES / "json_field.c"), "-p", "feld=n", "--input", records)
    assert line == ("kolk smartmodule test: json_field.c [stage 2] (map) cannot start: initFailed: init returned 1 "
                    "for parameters ['feld']: unknown parameter `feld` (this module takes: field)")


def test_the_old_plain_lines_input_still_works(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    """A file that is not .jsonl is plain lines: a JSON line there is just a value."""
    (tmp_path / "in.txt").write_text('{"key": "k"}\nk2:v2\n')
    status, out, err = cli(capsys, "test", str(EXAMPLES / "contains.c"), "-p", "needle=k", "--input",
                           str(tmp_path / "in.txt"), "--json")
    assert status == 0, err
    assert [r["value"] for r in json.loads(out)["records"]] == ['{"key": "k"}', "k2:v2"]
    status, out, err = cli(capsys, "test", str(EXAMPLES / "contains.c"), "-p", "needle=v", "--input",
                           str(tmp_path / "in.txt"), "--input-format", "lines", "--key-separator", ":", "--json")
    assert status == 0, err
    assert [(r["key"], r["value"]) for r in json.loads(out)["records"]] == [('{"key"', ' "k"}'), ("k2", "v2")][1:]
    (tmp_path / "in.txt").write_text('{"key": "k", "value": "v"}\n')
    status, out, err = cli(capsys, "test", str(EXAMPLES / "contains.c"), "-p", "needle=v", "--input",
                           str(tmp_path / "in.txt"), "--input-format", "jsonl", "--json")
    assert status == 0, err
    assert [(r["key"], r["value"]) for r in json.loads(out)["records"]] == [("k", "v")]


@pytest.mark.parametrize("args, expected", [
    (["--input", "IN"], "give the module to test: MODULE, or --module FILE_OR_NAME for each stage of a chain"),
    (["-p", "needle=x", "--input", "IN"], "-p needle=...: a parameter follows the MODULE or --module it belongs to"),
    (["CONTAINS", "-p", "needle=x", "-p", "needle=y", "--input", "IN"],
     "-p needle=y: parameter 'needle' is given twice for one stage"),
    (["CONTAINS", "-p", "needle", "--input", "IN"], "parameter 'needle' must be KEY=VALUE"),
    (["CONTAINS", *["--module", "CONTAINS"] * 16, "--input", "IN"],
     "a chain of 17 modules is more than 16 (the SPU's limit)"),
    (["CONTAINS", "-p", "needle=x", "--input", "IN", "--key-separator", ":"],
     "IN: --key-separator is for the lines format; a JSON line gives its own key"),
    (["CONTAINS", "-p", "needle=x", "--input", "IN", "--bytes", "base64"], "argument --bytes: invalid choice: 'base64'"),
    (["CONTAINS", "-p", "needle=x", "--input", "IN", "--input-format", "csv"],
     "argument --input-format: invalid choice: 'csv'"),
    (["CONTAINS", "-p", "needle=x", "--input", "MISSING"], "MISSING: no such file"),
    (["CONTAINS", "-p", "needle=x", "--module", "nowhere.c", "--input", "IN"], "nowhere.c: no such file"),
])
def test_test_refuses_a_bad_chain_or_option(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path,
                                            args: list[str], expected: str) -> None:
    good = write(tmp_path / "in.jsonl", ["x"])
    subst = {"CONTAINS": str(EXAMPLES / "contains.c"), "IN": good, "MISSING": str(tmp_path / "missing.jsonl")}
    args = [subst.get(a, a) for a in args]
    expected = expected.replace("MISSING", subst["MISSING"]).replace("IN:", f"{good}:")
    line = refused(capsys, "test", *args)
    assert expected in line, line


@pytest.mark.parametrize("command", ["consume", "produce"])
def test_consume_and_produce_refuse_a_parameter_given_twice_for_one_stage(capsys: pytest.CaptureFixture[str],
                                                                          command: str) -> None:
    """The chain options are shared: a repeated key would otherwise silently keep the last."""
    try:
        status = main([command, "t", "--smartmodule", "contains", "-p", "needle=a", "-p", "needle=b"])
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    assert status == 2 and out == ""
    assert err.strip().splitlines() == [f"kolk {command}: -p needle=b: parameter 'needle' is given twice for one "
                                        f"stage (see kolk {command} --help)"]


def test_test_refuses_an_input_file_over_its_limit_before_reading_it(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: pathlib.Path) -> None:
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        f.truncate(testinput.INPUT_BYTES_MAX + 1)  # sparse: nothing to read
    line = refused(capsys, "test", str(EXAMPLES / "contains.c"), "-p", "needle=x", "--input", str(big))
    assert line == (f"kolk smartmodule test: {big} is {testinput.INPUT_BYTES_MAX + 1} bytes, more than "
                    f"{testinput.INPUT_BYTES_MAX}: test with a smaller sample")


def test_a_bad_input_line_is_named_through_the_cli(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    records = write(tmp_path / "in.jsonl", ["ok", {"vaule": "x"}])
    line = refused(capsys, "test", str(EXAMPLES / "contains.c"), "-p", "needle=x", "--input", records)
    assert line == (f"kolk smartmodule test: {records} line 2: unknown field 'vaule' (a record has key, value, "
                    "headers, timestamp)")


# ---------------------------------------------------------------- test: stored modules, from a real SC

def test_a_chain_mixes_stored_modules_and_files(capsys: pytest.CaptureFixture[str],
                                                tmp_path_factory: pytest.TempPathFactory) -> None:
    """With --sc, a stage that is not a file is a stored NAME[@VERSION], fetched over mutual TLS
    from a real SC (and its bytes checked against their sha256) and run like a file."""
    from dataplane_cluster import DataPlaneCluster

    root = tmp_path_factory.mktemp("stored")
    cluster = DataPlaneCluster(str(root / "cluster"), spus=0, tls=True)
    try:
        cluster.start()
        admin = cluster.pki["admin"]
        sc = ["--sc", ",".join(cluster.sc_addresses), "--tls-ca", admin["ca"], "--tls-cert", admin["cert"],
              "--tls-key", admin["key"]]
        status, _, err = cli(capsys, "create", "contains", str(EXAMPLES / "contains.c"), *sc)
        assert status == 0, err
        records = write(root / "in.jsonl", ['{"n": 1, "f": "apple"}', '{"n": 2, "f": "pear"}'])
        status, out, err = cli(capsys, "test", "--module", "contains", "-p", "needle=apple", "--module",
                               str(EXAMPLES / "json_field.c"), "-p", "field=n", "--input", records, "--json", *sc)
        assert status == 0, err
        result = json.loads(out)
        assert [s["module"] for s in result["stages"]] == ["contains@1 [stage 1]", "json_field.c [stage 2]"]
        assert [(r["offset"], r["value"]) for r in result["records"]] == [(0, "1")]
        line = refused(capsys, "test", "--module", "nope@3", "--input", records, *sc)
        assert line == "kolk smartmodule test: smartmodule nope@3 is not stored"
    finally:
        cluster.close()


@pytest.mark.parametrize("lang, expected", [
    ("c", "SmartModule counter.wasm (aggregate) failed at offset 0: recordError: aggregate refused the record: "
          "the accumulator is not a decimal count (see the parameter `initial`)"),
    ("wat", "SmartModule counter.wasm (aggregate) failed: recordError: aggregate refused the batch "
            "(code -2147483648): the accumulator is not a decimal count (see the parameter `initial`)"),
])
def test_a_generated_aggregate_explains_a_bad_initial_accumulator(capsys: pytest.CaptureFixture[str],
                                                                  tmp_path: pathlib.Path, lang: str,
                                                                  expected: str) -> None:
    """The templates use kolk_error: the C one through kolk_fail, the WAT one by hand."""
    assert cli(capsys, "generate", "aggregate", "counter", "--lang", lang, "--dir", str(tmp_path))[0] == 0
    assert cli(capsys, "build", str(tmp_path / f"counter{SUFFIX[lang]}"))[0] == 0
    line = refused(capsys, "test", str(tmp_path / "counter.wasm"), "-p", "initial=12x", "--input",
                   str(tmp_path / "counter.jsonl"))
    assert line == f"kolk smartmodule test: {expected}"
    status, out, _ = cli(capsys, "test", str(tmp_path / "counter.wasm"), "-p", "initial=100", "--input",
                         str(tmp_path / "counter.jsonl"))
    assert status == 0 and out.splitlines()[-1] == f'accumulator of counter.wasm: "{100 + RECORDS_IN}"'


# ---------------------------------------------------------------- build and test refuse what create refuses

START = '''(module (memory (export "memory") 1)
  (func (export "kolk_abi_version") (result i32) (i32.const 1))
  (func (export "kolk_alloc") (param i32) (result i32) (i32.const 1024))
  (func $s) (start $s)
  (func (export "filter") (param i32 i32) (result i64) (i64.const 0)))'''


def test_build_and_test_refuse_a_module_create_refuses_with_the_same_message(
        capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    from kolk.smartmodule.limits import SmartModuleError
    from kolk.smartmodule.validate import validate_module
    import wasmtime

    src = tmp_path / "start.wat"
    src.write_text(START)
    with pytest.raises(SmartModuleError) as info:
        validate_module(wasmtime.wat2wasm(START))
    line = refused(capsys, "build", str(src))
    assert str(info.value) in line and not (tmp_path / "start.wasm").exists(), line
    data = write(tmp_path / "in.jsonl", ["x"])
    line = refused(capsys, "test", str(src), "--input", data)
    assert str(info.value) in line, line


def test_test_runs_the_input_in_batches_as_a_producer_would(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: pathlib.Path) -> None:
    data = write(tmp_path / "in.jsonl", [{"key": "k", "value": str(i)} for i in range(25)])
    status, out, err = cli(capsys, "test", str(EXAMPLES / "count_per_key.c"), "--input", data,
                           "--batch-records", "10", "--json")
    assert status == 0, err
    result = json.loads(out)
    offsets = [r["offset"] for r in result["records"]]
    assert offsets == list(range(25))  # three batches, offsets carried on
    assert refused(capsys, "test", str(EXAMPLES / "count_per_key.c"), "--input", data, "--batch-records", "0") == \
        "kolk smartmodule test: argument --batch-records: '0' is not a number of records from 1 to 100000 " \
        "(see kolk smartmodule test --help)"
