"""``kolk smartmodule generate KIND NAME``: a new module to start from, and test records for it.

Writes ``NAME.c``, ``NAME.rs``, ``NAME.ts`` (AssemblyScript) or ``NAME.wat`` from ``smartmodule/templates/<lang>/<kind>.<ext>``
(the placeholder ``{{NAME}}`` replaced) and ``NAME.jsonl``, records in the JSON-lines format of
``kolk smartmodule test``; then prints the two commands that build and test it. It never
overwrites a file: if either exists, nothing is written.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import shlex
from typing import Any

from ..protocol.errors import KolkError
from ..smartmodule.abi import KINDS
from .admin import _print

LANGUAGES = {"c": ".c", "rust": ".rs", "as": ".ts", "wat": ".wat"}  # --lang: the source file's suffix
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
PLACEHOLDER = "{{NAME}}"
TEMPLATE_BYTES_MAX = 1 << 20

# The test records written beside the module: one of each thing a record can be (a key or
# none, a null value, headers, bytes that are not UTF-8, a line that is a bare value, a
# number). A template takes no required parameter, so `test` runs it on these as printed.
TEST_RECORDS: list[Any] = [
    {"key": "sensor-1", "value": "temperature 21", "headers": {"unit": "celsius"}, "timestamp": 1700000000000},
    {"key": "sensor-2", "value": "humidity 40", "timestamp": 1700000001000},
    {"key": None, "value": None, "timestamp": 1700000002000},
    "a bare JSON string is a value",
    {"key": "sensor-1", "value": {"hex": "ff00fe"}, "timestamp": 1700000003000},
    {"key": "sensor-1", "value": "temperature 23", "timestamp": 1700000004000},
    {"key": "sensor-3", "value": "17", "timestamp": 1700000005000},
]


def _templates_dir() -> pathlib.Path:
    """smartmodule/templates, beside the SDK (in the source tree and in an installed wheel)."""
    from ..smartmodule.build import SDK_DIR

    return SDK_DIR.parent / "templates"


def add_generate_command(ssub: Any) -> None:
    g = ssub.add_parser("generate", help="write a new module of a kind from a template, with test records")
    g.add_argument("kind", metavar="KIND", help=f"one of {', '.join(KINDS)}")
    g.add_argument("name", metavar="NAME", help="the module's name: a letter, then letters, digits or _ (at most 64)")
    g.add_argument("--lang", default="c", metavar="LANG", help=f"{', '.join(LANGUAGES)} (default: c)")
    g.add_argument("--dir", default=".", metavar="DIR", help="where to write NAME.<ext> and NAME.jsonl (default: .)")
    g.add_argument("--json", action="store_true", help="print JSON")


def template_path(kind: str, lang: str) -> pathlib.Path:
    """The template of ``kind`` in ``lang``; raises KolkError naming what is unknown or missing."""
    if kind not in KINDS:
        raise KolkError(f"unknown kind {kind!r}: one of {', '.join(KINDS)}")
    if lang not in LANGUAGES:
        raise KolkError(f"unknown language {lang!r}: one of {', '.join(LANGUAGES)}")
    path = _templates_dir() / lang / f"{kind}{LANGUAGES[lang]}"
    if not path.is_file():
        raise KolkError(f"there is no {lang} template for {kind} in this installation ({path} is missing)")
    return path


def test_records_text() -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in TEST_RECORDS)


def run_generate(args: argparse.Namespace) -> int:
    if not NAME_RE.fullmatch(args.name):
        raise KolkError(f"module name {args.name!r} is not a name: a letter, then letters, digits or _ "
                        "(at most 64), as it becomes a file name and appears in the source")
    template = template_path(args.kind, args.lang)
    if template.stat().st_size > TEMPLATE_BYTES_MAX:
        raise KolkError(f"{template} is more than {TEMPLATE_BYTES_MAX} bytes: not a template")
    source = template.read_text(encoding="utf-8").replace(PLACEHOLDER, args.name)
    folder = pathlib.Path(args.dir)
    if folder.exists() and not folder.is_dir():
        raise KolkError(f"{folder} is not a directory")
    module = folder / f"{args.name}{LANGUAGES[args.lang]}"
    records = folder / f"{args.name}.jsonl"
    for path in (module, records):
        if path.exists():
            raise KolkError(f"{path} already exists: choose another NAME or --dir (nothing was written)")
    folder.mkdir(parents=True, exist_ok=True)
    written: list[pathlib.Path] = []
    try:
        for path, text in ((module, source), (records, test_records_text())):
            with open(path, "x", encoding="utf-8") as f:  # "x": a file made meanwhile is not overwritten
                written.append(path)
                f.write(text)
    except OSError:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    wasm = module.with_suffix(".wasm")
    commands = [f"kolk smartmodule build {shlex.quote(str(module))}",
                f"kolk smartmodule test {shlex.quote(str(wasm))} --input {shlex.quote(str(records))}"]
    article = "an" if args.kind[0] in "aeiou" else "a"
    _print(args, {"kind": args.kind, "lang": args.lang, "files": [str(module), str(records)], "next": commands},
           f"wrote {module} ({article} {args.kind} in {args.lang}) and {records} (test records); next:\n"
           + "\n".join(f"  {c}" for c in commands))
    return 0
