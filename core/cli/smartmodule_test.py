"""``kolk smartmodule test``: a chain of SmartModules run on this machine, on one batch of test
records, through the same engine and chain code as an SPU (docs/smartmodule-abi.md "Testing
a module").

The chain is the positional MODULE (if given) then each ``--module FILE_OR_NAME``, each stage
followed by its own ``-p KEY=VALUE``s; a stage is a ``.c``, ``.wat``, ``.rs``, ``.ts`` or ``.wasm`` file,
or with ``--sc`` a stored ``NAME[@VERSION]``. The records come from ``--input`` as JSON lines
or plain lines (smartmodule/testinput.py); all of them make one batch at offset 0. The output
shows every record with its offset, timestamp, key, value and headers, bytes as UTF-8 or hex,
and every aggregate's accumulator.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import sys
import time
from typing import Any

from ..client.admin import AdminClient, run
from ..metadata.specs import SmartModuleSpec, SpecError
from ..protocol.errors import KolkError
from ..protocol.limits import CHAIN_STAGES_MAX
from ..smartmodule import testinput
from ..smartmodule.build import BuildError, load_source
from .admin import SC_ENV, _print, _sc_option, client_tls, resolve_sc
from .smartmodule import add_chain_options

BATCH_BYTES_MAX = 64 << 20  # the test batch, and the chain's output
BYTES_MODES = ("auto", "utf8", "hex")
BATCH_RECORDS = 1000  # records per test batch: a producer's batch is about this size for small records


def _batch_records(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 100_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of records from 1 to 100000")
    return n
SOURCE_SUFFIXES = (".wasm", ".wat", ".c", ".rs", ".ts")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # shown as hex in --bytes auto


def add_test_command(ssub: Any) -> None:
    t = ssub.add_parser("test", help="run a module, or a chain of modules, on test records on this machine")
    t.add_argument("module", nargs="?", metavar="MODULE",
                   help="the first stage: a .c, .wat, .rs, .ts or .wasm file, or with --sc a stored NAME[@VERSION]")
    add_chain_options(t, flag="--module", dest="stages", metavar="FILE_OR_NAME", positional_stage=True,
                      help="a further stage of the chain, as MODULE (repeat, in chain order)")
    t.add_argument("--input", required=True, metavar="FILE",
                   help="the records: JSON lines (one record a line) or plain lines (one value a line)")
    t.add_argument("--input-format", choices=testinput.FORMATS,
                   help="jsonl or lines (default: jsonl for a .jsonl or .ndjson file, else lines)")
    t.add_argument("--key-separator", metavar="SEP",
                   help="lines format: split each line into key and value at the first SEP")
    t.add_argument("--batch-records", type=_batch_records, default=BATCH_RECORDS, metavar="N",
                   help=f"records per batch, as a producer would send them: each batch is one call of each "
                        f"module, with its own fuel (default {BATCH_RECORDS})")
    t.add_argument("--bytes", choices=BYTES_MODES, default="auto",
                   help="how keys, values and headers are shown: utf8 (undecodable bytes replaced), hex, or "
                        "auto: text when the bytes are UTF-8 without control characters (tab and line ends "
                        "aside), else hex (default)")
    _sc_option(t)


def chain_of(module: str | None, stages: list[tuple[str | None, dict[str, str]]] | None) -> list[tuple[str, dict[str, str]]]:
    """The chain in order: MODULE first, then each --module, with their parameters."""
    chain = list(stages or [])
    if chain and chain[0][0] is None:  # -p before any --module: MODULE's parameters
        if module is None:
            key = next(iter(chain[0][1]))
            raise KolkError(f"-p {key}=...: a parameter follows the MODULE or --module it belongs to")
        chain[0] = (module, chain[0][1])
    elif module is not None:
        chain.insert(0, (module, {}))
    if not chain:
        raise KolkError("give the module to test: MODULE, or --module FILE_OR_NAME for each stage of a chain")
    if len(chain) > CHAIN_STAGES_MAX:
        raise KolkError(f"a chain of {len(chain)} modules is more than {CHAIN_STAGES_MAX} (the SPU's limit)")
    return [(str(name), params) for name, params in chain]


def _module_bytes(args: argparse.Namespace, name: str) -> tuple[str, bytes]:
    """``(label, wasm)`` of one stage: a local file, or with --sc a stored module."""
    from .smartmodule import stored

    path = pathlib.Path(name)
    if path.is_file() or path.suffix.lower() in SOURCE_SUFFIXES:
        return path.name, load_source(path)
    if not (args.sc or os.environ.get(SC_ENV)):
        raise BuildError(f"{name}: no such file (to test a stored SmartModule, give --sc)")
    obj = run(lambda: stored(AdminClient(resolve_sc(args.sc), tls=client_tls(args)), name))
    try:
        return obj["name"], SmartModuleSpec.from_dict(obj["spec"]).wasm  # the bytes, checked against their sha256
    except SpecError as e:
        raise KolkError(f"smartmodule {obj['name']}: the stored module is not valid: {e}") from None


def read_records(path: str, fmt: str | None, key_separator: str | None) -> list[testinput.TestRecord]:
    p = pathlib.Path(path)
    if not p.is_file():
        raise BuildError(f"{p}: no such file")
    size = p.stat().st_size
    if size > testinput.INPUT_BYTES_MAX:
        raise BuildError(f"{p} is {size} bytes, more than {testinput.INPUT_BYTES_MAX}: test with a smaller sample")
    return testinput.parse(p.read_bytes(), testinput.format_for(p.name, fmt), str(path), key_separator)


def run_test(args: argparse.Namespace) -> int:
    from ..segments.batch import iter_batches
    from ..segments.records import build_batch, decode_records
    from ..smartmodule.chain import Chain, Stage
    from ..smartmodule.engine import ModuleCache, SmartModuleError
    from ..smartmodule.validate import validate_module

    chain_spec = chain_of(args.module, args.stages)
    records = read_records(args.input, args.input_format, args.key_separator)
    cache = ModuleCache()
    stages: list[Stage] = []
    described: list[dict[str, Any]] = []
    sources: dict[str, tuple[str, bytes]] = {}  # a file used twice is built once
    try:
        for i, (name, params) in enumerate(chain_spec, 1):
            if name not in sources:
                sources[name] = _module_bytes(args, name)
            label, wasm = sources[name]
            if len(chain_spec) > 1:
                label = f"{label} [stage {i}]"
            try:
                validate_module(wasm)  # refused here as create (and the SC) would refuse it
            except SmartModuleError as e:
                raise KolkError(f"{label}: the module is refused: {e.reason}: {e}") from None
            loaded = cache.load(wasm)
            try:
                instance = loaded.instantiate(params)
            except SmartModuleError as e:
                raise KolkError(f"{label} ({loaded.kind}) cannot start: {e.reason}: {e}") from None
            stages.append(Stage(label, instance))
            described.append({"module": label, "kind": loaded.kind, "params": params})
        stamps = testinput.timestamps(records, int(time.time() * 1000))
        step = args.batch_records
        batches = b"".join(
            build_batch([(r.key, r.value, list(r.headers)) for r in records[i:i + step]], base_offset=i,
                        timestamps=stamps[i:i + step]) for i in range(0, len(records), step))
        out = Chain(stages).apply(batches, BATCH_BYTES_MAX)
        accumulators = [s.instance.accumulator or b"" for s in stages]
    finally:
        for stage in stages:  # the instances' stores go now, not when a collector finds them
            stage.instance.close()
    results = []
    if out:
        for pos, _h in iter_batches(out, BATCH_BYTES_MAX, shared_offsets=True):
            results.extend(decode_records(out, pos))
    mode = args.bytes
    shown = [{"offset": r.offset, "timestamp": r.timestamp, "key": json_bytes(r.key, mode),
              "value": json_bytes(r.value, mode), "headers": [[n, json_bytes(v, mode)] for n, v in r.headers]}
             for r in results]
    lines = [record_line(r, mode) for r in results] or ["(no records out)"]
    for entry, acc in zip(described, accumulators):
        if entry["kind"] == "aggregate":
            entry["accumulator"] = json_bytes(acc, mode)
            lines.append(f"accumulator of {entry['module']}: {text_bytes(acc, mode)}")
    value: dict[str, Any] = {"stages": described, "records_in": len(records), "records_out": len(results),
                             "records": shown}
    if not args.json:
        names = " -> ".join(f"{d['module']} ({d['kind']})" for d in described)
        print(f"{names}: {len(records)} record(s) in, {len(results)} out", file=sys.stderr)
    _print(args, value, "\n".join(lines))
    return 0


# ---------------------------------------------------------------- showing bytes

def _as_text(b: bytes, mode: str) -> str | None:
    """The text to show for ``b``, or None when it is to be shown as hex."""
    if mode == "hex":
        return None
    if mode == "utf8":
        return b.decode("utf-8", errors="replace")
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError:
        return None
    # Control characters other than tab and line ends mean binary (a NUL in a count, say).
    return None if _CONTROL.search(text) else text


def json_bytes(b: bytes | None, mode: str) -> Any:
    """For --json: null, a string, or {"hex": "..."} (test input takes all three back)."""
    if b is None:
        return None
    text = _as_text(b, mode)
    return {"hex": b.hex()} if text is None else text


def text_bytes(b: bytes | None, mode: str) -> str:
    """For a terminal: null, a quoted string (escapes as in JSON), or 0x and hex digits."""
    import json

    if b is None:
        return "null"
    text = _as_text(b, mode)
    return "0x" + b.hex() if text is None else json.dumps(text, ensure_ascii=False)


def record_line(r: Any, mode: str) -> str:
    """``OFFSET  TIMESTAMP  key=K  value=V  headers={name=V, ...}``."""
    line = f"{r.offset}  {r.timestamp}  key={text_bytes(r.key, mode)}  value={text_bytes(r.value, mode)}"
    if r.headers:
        line += "  headers={" + ", ".join(f"{n}={text_bytes(v, mode)}" for n, v in r.headers) + "}"
    return line
