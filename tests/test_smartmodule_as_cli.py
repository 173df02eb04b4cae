"""AssemblyScript SmartModules through the command line and a live cluster: ``kolk smartmodule
build`` and ``test`` on ``.ts`` files, a chain of the five examples giving exactly what the C
chain gives, ``generate --lang as``, a module stored with ``kolk smartmodule create`` and run on
consume by a real SC and SPU over mutual TLS, and every kind of bad input refused with one line
naming what is wrong. (The templates are built and tested with the other languages' in
test_smartmodule_authoring.py.)"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from kolk.cli.main import main
from kolk.smartmodule import as_build
from kolk.smartmodule.build import BuildError, build_source

sys.path.insert(0, os.path.dirname(__file__))
from dataplane_cluster import DataPlaneCluster, read_all, release_consumer, run_async  # noqa: E402
from test_smartmodule_as import built_examples  # noqa: E402

from kolk.client.consumer import Offset  # noqa: E402

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "smartmodule" / "examples"
RECORDS = [
    {"key": "a", "value": '{"user": "ann", "pw": "s1"}\n{"user": "bob", "pw": "s2"}\r\n\n', "timestamp": 1700000000000},
    {"key": None, "value": '{"user": "carla", "pw": {"x": 1}}', "timestamp": 1700000001000},
    {"key": "a", "value": '{"pw": 7, "user": "dan"}\n{"user": "anna"}', "headers": {"h": "v"}, "timestamp": 1700000002000},
    {"key": "b", "value": None, "timestamp": 1700000003000},
]
CHAIN = [("split_lines", []), ("redact", ["-p", "field=pw"]), ("json_field", ["-p", "field=user"]),
         ("contains", ["-p", "needle=a"]), ("count_per_key", [])]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        status = main(["smartmodule", *args])
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def wasm_files(tmp_path_factory: Any) -> dict[str, pathlib.Path]:
    folder = tmp_path_factory.mktemp("as-wasm")
    files = {}
    for name, wasm in built_examples().items():
        files[name] = folder / f"{name}.wasm"
        files[name].write_bytes(wasm)
    return files


def chain_args(files: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for i, (name, params) in enumerate(CHAIN):
        args += ([] if i == 0 else ["--module"]) + [str(files[name])] + params
    return args


def test_the_five_examples_chained_in_kolk_smartmodule_test_give_what_the_c_chain_gives(
        capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path, wasm_files: dict[str, pathlib.Path]) -> None:
    records = tmp_path / "in.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    # The first stage as its source: `kolk smartmodule test` builds a .ts itself.
    status, out, err = cli(capsys, "test", *chain_args({**wasm_files, "split_lines": EXAMPLES / "split_lines.ts"}),
                           "--input", str(records), "--json")
    assert status == 0, err
    got = json.loads(out)
    status, out, err = cli(capsys, "test", *chain_args({n: EXAMPLES / f"{n}.c" for n, _ in CHAIN}),
                           "--input", str(records), "--json")
    assert status == 0, err
    want = json.loads(out)
    assert got["records"] == want["records"] and got["records_in"] == want["records_in"] == 4
    assert [(r["offset"], r["key"], r["value"]) for r in got["records"]] == [
        (0, "a", "a=1"), (1, None, "null=1"), (2, "a", "a=2"), (2, "a", "a=3")]
    assert got["stages"][-1]["accumulator"] == want["stages"][-1]["accumulator"]


def test_kolk_smartmodule_build_takes_a_ts_source(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    out_wasm = tmp_path / "c.wasm"
    status, out, err = cli(capsys, "build", str(EXAMPLES / "contains.ts"), "-o", str(out_wasm))
    assert status == 0 and out.startswith(f"built {out_wasm}: filter"), err
    assert out_wasm.read_bytes() == built_examples()["contains"]  # the build is deterministic


def test_generate_lang_as_writes_a_ts_module_and_its_records(capsys: pytest.CaptureFixture[str],
                                                             tmp_path: pathlib.Path) -> None:
    status, out, err = cli(capsys, "generate", "filter_map", "probe", "--lang", "as", "--dir", str(tmp_path))
    assert status == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.jsonl", "probe.ts"]
    assert "export function filter_map(r: Record, out: Output): i32" in (tmp_path / "probe.ts").read_text()


# ------------------------------------------------------------------ bad input, one line each

def refused(tmp_path: pathlib.Path, source: str, names_the_file: bool = True) -> str:
    path = tmp_path / "bad.ts"
    path.write_text(source)
    with pytest.raises(BuildError) as e:
        build_source(path)
    message = str(e.value)
    assert "\n" not in message and (message.startswith(str(path)) or not names_the_file)
    return message


def test_a_module_without_a_kind_function_is_refused(tmp_path: pathlib.Path) -> None:
    m = refused(tmp_path, "// export function filter(r: Record): bool\nexport function helper(): i32 { return 1; }\n")
    assert m.endswith("no kind function: a module exports one of function filter, map, filter_map, array_map, "
                      "aggregate (docs/smartmodule-abi.md, Writing a module in AssemblyScript)")


def test_a_module_with_two_kinds_is_refused(tmp_path: pathlib.Path) -> None:
    m = refused(tmp_path, 'import { Record, Output } from "kolk-smartmodule";\n'
                          "export function filter(r: Record): bool { return true; }\n\n"
                          "export function map(r: Record, o: Output): i32 { return 0; }\n")
    assert m.endswith("a module has exactly one kind; this one exports filter (line 2) and map (line 4)")


def test_a_kind_function_that_is_not_exported_is_refused(tmp_path: pathlib.Path) -> None:
    m = refused(tmp_path, "function filter(r: i32): bool { return true; }\n")
    assert m.endswith("bad.ts:1: function filter must be exported: export function filter(r: Record): bool  "
                      "(or i32: 1 keep, 0 drop, negative error)")


def test_a_syntax_error_is_one_line_naming_file_and_line(tmp_path: pathlib.Path) -> None:
    m = refused(tmp_path, 'import { Record } from "kolk-smartmodule";\n\n'
                          "export function filter(r: Record): bool {\n  return r.valueLen >= 0 &&;\n}\n")
    path = tmp_path / "bad.ts"
    assert m.startswith(f"{path} does not compile: {path}:4:"), m
    assert "ERROR TS1109: Expression expected." in m


def test_a_kind_function_with_the_wrong_signature_names_the_signature(tmp_path: pathlib.Path) -> None:
    m = refused(tmp_path, "export function map(x: i32): i32 { return x; }\n")
    assert "map must be declared as export function map(r: Record, out: Output): i32 (ERROR" in m


def test_asc_missing_says_how_to_install_it(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(as_build.ASC_ENV, str(tmp_path / "nowhere" / "asc"))
    m = refused(tmp_path, "export function filter(r: i32): bool { return true; }\n", names_the_file=False)
    assert m == (f"{tmp_path / 'nowhere' / 'asc'} (asc, the AssemblyScript compiler) is not installed or not "
                 f"found: npm ci --prefix {as_build.AS_SDK_DIR}")


def test_a_module_importing_what_the_host_refuses_is_refused_at_build(tmp_path: pathlib.Path) -> None:
    m = refused(tmp_path, 'import { Record } from "kolk-smartmodule";\n'
                          "export function filter(r: Record): bool { return Math.random() < 0.5; }\n")
    assert m.endswith("the module imports env.seed (Math.random: a SmartModule has no randomness); "
                      "a SmartModule imports nothing")


# ------------------------------------------------------------------ a live cluster

@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("sm-as")), spus=1, tls=True)
    try:
        c.start()
        yield c
    finally:
        c.close()


def test_modules_stored_with_kolk_smartmodule_create_filter_a_live_consume(
        cluster: DataPlaneCluster, wasm_files: dict[str, pathlib.Path]) -> None:
    """contains.ts and redact.ts, stored with the CLI over mutual TLS, run on the SPU: the
    consumer gets exactly the matching records, masked, at their own offsets."""
    pki = cluster.pki["admin"]
    env = {**os.environ, "KOLK_TLS_CA": pki["ca"], "KOLK_TLS_CERT": pki["cert"], "KOLK_TLS_KEY": pki["key"]}
    for name in ("contains", "redact"):
        done = subprocess.run([sys.executable, "-m", "kolk", "smartmodule", "create", f"{name}-as",
                               str(wasm_files[name]), "--sc", ",".join(cluster.sc_addresses)],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr

    async def body() -> None:
        client = cluster.client()
        try:
            await client.create_topic("as-live", 1, 1)
            producer = client.producer("as-live")
            for i in range(30):
                await producer.send(json.dumps({"n": i, "pw": "secret", "tag": "needle" if i % 7 == 0 else "hay"})
                                    .encode(), key=b"k%d" % i)
            await producer.flush()
            plain = await read_all(client, "as-live")
            assert len(plain) == 30
            consumer = client.consumer("as-live", start=Offset.beginning(), stop_at_end=True,
                                       smartmodules=[("contains-as", {"needle": "needle"}),
                                                     ("redact-as", {"field": "pw"})])
            got = []
            try:
                async for batch in consumer.batches():
                    got.extend(batch)
            finally:
                await release_consumer(consumer)
            assert [(r.offset, r.key) for r in got] == [(i, b"k%d" % i) for i in range(0, 30, 7)]
            assert [json.loads(r.value) for r in got] == [{"n": i, "pw": "***", "tag": "needle"}
                                                          for i in range(0, 30, 7)]
        finally:
            await client.close()
    run_async(body)
