"""``kolk smartmodule``: build, test and store SmartModules (docs/smartmodule-abi.md).

``build`` and ``test`` run on this machine only (clang for a ``.c`` file, the engine for the
rest); ``create``, ``list``, ``describe`` and ``delete`` talk to any SC, where a module is the
object ``NAME@VERSION`` and a version, once stored, never changes. Errors print one line
naming what was wrong and exit with status 1; ``--json`` prints machine output.

Also here: the ``--smartmodule NAME[@VERSION] [-p KEY=VALUE ...]`` options that ``kolk
produce`` and ``kolk consume`` take, in chain order.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import os
import pathlib
import sys
import time
from typing import Any

from ..client.admin import AdminClient, run
from ..metadata.specs import SmartModuleSpec, SpecError
from ..protocol.errors import KolkError, NotFoundError, VersionConflictError
from ..smartmodule.build import BuildError, build_c, load_source
from .admin import SC_ENV, _print, _sc_option, _table, client_tls, resolve_sc

# The engine (wasmtime) is imported by the commands that run a module, not by every `kolk`.

COMMANDS = ("smartmodule",)
KIND = "smartmodule"  # the metadata object kind
TEST_INPUT_BYTES_MAX = 16 << 20
TEST_BATCH_BYTES_MAX = 64 << 20
SHA_SHOWN = 12  # hex digits of sha256 in tables


# ---------------------------------------------------------------- chain options of produce/consume

class _StageAction(argparse.Action):
    """--smartmodule NAME[@VERSION]: starts a new stage of the chain."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        chain = list(getattr(namespace, self.dest, None) or [])
        chain.append((values, {}))
        setattr(namespace, self.dest, chain)


class _ParamAction(argparse.Action):
    """-p/--param KEY=VALUE: a parameter of the most recent --smartmodule."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        chain = getattr(namespace, self.dest, None)
        if not chain:
            # `-p 5` is -p/--param, not a partition (kafka's -p habit): say which flag was meant.
            hint = f" (did you mean --partition {values}?)" if str(values).isdigit() else ""
            parser.error(f"{option_string} {values}: a parameter follows the --smartmodule it belongs to{hint}")
        key, value = _key_value(values, parser)
        chain[-1][1][key] = value


def add_chain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smartmodule", dest="smartmodules", action=_StageAction, metavar="NAME[@VERSION]",
                   help="run this stored SmartModule on the SPU (repeat for a chain, in order)")
    p.add_argument("-p", "--param", dest="smartmodules", action=_ParamAction, metavar="KEY=VALUE",
                   help="a parameter of the --smartmodule before it (repeatable)")


def _key_value(text: str, parser: argparse.ArgumentParser | None = None) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        message = f"parameter {text!r} must be KEY=VALUE"
        if parser is not None:
            parser.error(message)
        raise KolkError(message)
    return key, value


# ---------------------------------------------------------------- the commands

def add_commands(sub: Any) -> None:
    sm = sub.add_parser("smartmodule", help="build, test, store, list and delete SmartModules")
    ssub = sm.add_subparsers(dest="action", required=True)
    c = ssub.add_parser("create", help="check a module and store it as NAME@VERSION")
    c.add_argument("name", metavar="NAME")
    c.add_argument("file", nargs="?", metavar="FILE", help="the module: .wasm, .wat or .c")
    c.add_argument("--wasm", metavar="FILE", help="the module (instead of FILE)")
    c.add_argument("--version", dest="module_version",
                   help="default: 1, or one more than the highest all-digit version stored")
    c.add_argument("--description")
    _sc_option(c)
    _sc_option(ssub.add_parser("list", help="every stored module and version"))
    d = ssub.add_parser("describe", help="one stored module (its latest version unless @VERSION)")
    d.add_argument("name", metavar="NAME[@VERSION]")
    _sc_option(d)
    x = ssub.add_parser("delete", help="delete NAME@VERSION, or every version of NAME")
    x.add_argument("name", metavar="NAME[@VERSION]")
    _sc_option(x)
    b = ssub.add_parser("build", help="compile a C module with clang and the SDK header")
    b.add_argument("file", metavar="FILE.c")
    b.add_argument("-o", "--output", metavar="OUT.wasm", help="default: FILE.wasm beside FILE.c")
    b.add_argument("--json", action="store_true", help="print JSON")
    t = ssub.add_parser("test", help="run a module locally on one batch made of a file's lines")
    t.add_argument("module", metavar="MODULE", help="a .wasm, .wat or .c file, or with --sc a stored NAME[@VERSION]")
    t.add_argument("--input", required=True, metavar="FILE", help="one record value per line")
    t.add_argument("--key-separator", metavar="SEP", help="split each line into key and value at the first SEP")
    t.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="a parameter (repeatable)")
    _sc_option(t)


def _split(name: str) -> tuple[str, str]:
    base, _, version = name.partition("@")
    return base, version


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    """A stored module without its bytes, for printing."""
    base, version = _split(obj["name"])
    spec = {k: v for k, v in obj["spec"].items() if k != "wasm"}
    return {"name": base, "version": version, "spec": spec, "status": obj.get("status", {})}


async def _versions(client: AdminClient, base: str) -> list[dict[str, Any]]:
    """Every stored version of ``base``, oldest first."""
    from ..spu.smartmodules import version_key

    found = [o for o in await client.list_objects(KIND) if _split(o["name"])[0] == base]
    return sorted(found, key=lambda o: version_key(_split(o["name"])[1]))


async def _stored(client: AdminClient, name: str) -> dict[str, Any]:
    """The object of NAME@VERSION, or of NAME's latest version."""
    base, version = _split(name)
    if version:
        obj = await client.get_object(KIND, name)
    else:
        found = await _versions(client, base)
        obj = found[-1] if found else None
    if obj is None:
        raise NotFoundError(f"smartmodule {name} is not stored")
    return obj


async def _create(args: argparse.Namespace, client: AdminClient) -> None:
    from ..smartmodule.engine import ModuleCache

    if bool(args.file) == bool(args.wasm):
        raise KolkError("give the module once: FILE or --wasm FILE")
    path = args.file or args.wasm
    wasm = load_source(path)
    loaded = ModuleCache().load(wasm)  # refuse a bad module before it is stored
    base, version = _split(args.name)
    if version and args.module_version:
        raise KolkError(f"{args.name} names a version already: drop --version or the @{version}")
    version = version or args.module_version
    if not version:
        numbers = [int(v) for v in (_split(o["name"])[1] for o in await _versions(client, base)) if v.isdigit()]
        version = str(max(numbers) + 1) if numbers else "1"
    label = f"{base}@{version}"
    try:
        spec = SmartModuleSpec(wasm, loaded.sha256, len(wasm), loaded.kind, loaded.has_init, pathlib.Path(path).name,
                               _user(), args.description or None).to_dict()
    except SpecError as e:  # what the SC would refuse, refused here
        raise KolkError(f"smartmodule {label}: {e}") from None
    try:
        await client.put_object(KIND, label, spec, expected_version=-1)
    except VersionConflictError:
        raise KolkError(f"smartmodule {label} already exists and a stored version never changes: "
                        "give another --version") from None
    _print(args, _public({"name": label, "spec": spec}),
           f"smartmodule {label} created: {loaded.kind}, {len(wasm)} bytes, sha256 {loaded.sha256[:SHA_SHOWN]}")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


async def _run(args: argparse.Namespace) -> int:
    client = AdminClient(resolve_sc(args.sc), tls=client_tls(args))
    if args.action == "create":
        await _create(args, client)
    elif args.action == "list":
        from ..spu.smartmodules import version_key

        objs = sorted(await client.list_objects(KIND),
                      key=lambda o: (_split(o["name"])[0], version_key(_split(o["name"])[1])))
        rows = [[*_split(o["name"]), o["spec"].get("kind"), o["spec"].get("size"),
                 str(o["spec"].get("sha256", ""))[:SHA_SHOWN]] for o in objs]
        _print(args, [_public(o) for o in objs],
               _table(rows, ["NAME", "VERSION", "KIND", "SIZE", "SHA256"]) if rows else "no smartmodules")
    elif args.action == "describe":
        obj = await _stored(client, args.name)
        base, version = _split(obj["name"])
        versions = [_split(o["name"])[1] for o in await _versions(client, base)]
        info = _public(obj)
        info["versions"] = versions
        spec = info["spec"]
        created = obj.get("status", {}).get("created_ms")
        lines = [f"smartmodule {obj['name']}", f"kind:        {spec.get('kind', '-')}",
                 f"init:        {'yes (takes parameters)' if spec.get('init') else 'no'}",
                 f"size:        {spec.get('size')} bytes", f"sha256:      {spec.get('sha256')}",
                 f"description: {spec.get('description', '-')}", f"source:      {spec.get('source', '-')}",
                 f"created by:  {spec.get('created_by', '-')}",
                 f"created:     {_when(created) if isinstance(created, int) else '-'}",
                 f"versions:    {', '.join(versions)}"]
        _print(args, info, "\n".join(lines))
    elif args.action == "delete":
        base, version = _split(args.name)
        if version:
            names = [args.name]
        else:
            names = [o["name"] for o in await _versions(client, base)]
            if not names:
                raise NotFoundError(f"smartmodule {base} is not stored")
        for name in names:
            await client.delete_object(KIND, name)
        _print(args, {"deleted": names}, f"deleted {', '.join(names)}")
    return 0


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ms / 1000))


def _build(args: argparse.Namespace) -> int:
    from ..smartmodule.engine import ModuleCache

    src = pathlib.Path(args.file)
    if src.suffix.lower() != ".c":
        raise BuildError(f"{src}: build takes a .c file (a .wasm or .wat file needs no build)")
    wasm = build_c(src)
    loaded = ModuleCache().load(wasm)  # a module the engine would refuse is not written
    out = pathlib.Path(args.output) if args.output else src.with_suffix(".wasm")
    out.write_bytes(wasm)
    _print(args, {"path": str(out), "kind": loaded.kind, "init": loaded.has_init, "size": len(wasm),
                  "sha256": loaded.sha256},
           f"built {out}: {loaded.kind}, {len(wasm)} bytes, sha256 {loaded.sha256[:SHA_SHOWN]}")
    return 0


def _test_module(args: argparse.Namespace) -> tuple[str, bytes]:
    """``(label, wasm)`` of the module to test: a local file, or with --sc a stored one."""
    path = pathlib.Path(args.module)
    if path.is_file() or path.suffix.lower() in (".wasm", ".wat", ".c"):
        return path.name, load_source(path)
    if not (args.sc or os.environ.get(SC_ENV)):
        raise BuildError(f"{args.module}: no such file (to test a stored SmartModule, give --sc)")
    obj = run(lambda: _stored(AdminClient(resolve_sc(args.sc), tls=client_tls(args)), args.module))
    try:
        return obj["name"], SmartModuleSpec.from_dict(obj["spec"]).wasm  # the bytes, checked against their sha256
    except SpecError as e:
        raise KolkError(f"smartmodule {obj['name']}: the stored module is not valid: {e}") from None


def _read_input(path: str, separator: str | None) -> list[tuple[bytes | None, bytes]]:
    p = pathlib.Path(path)
    if not p.is_file():
        raise BuildError(f"{p}: no such file")
    if p.stat().st_size > TEST_INPUT_BYTES_MAX:
        raise BuildError(f"{p} is more than {TEST_INPUT_BYTES_MAX} bytes: test with a smaller sample")
    sep = separator.encode() if separator else None
    records: list[tuple[bytes | None, bytes]] = []
    for n, line in enumerate(p.read_bytes().split(b"\n"), 1):
        line = line.rstrip(b"\r")
        if not line:
            continue  # as kolk produce: empty lines are not records
        if sep is None:
            records.append((None, line))
        elif sep not in line:
            raise BuildError(f"{p} line {n} has no key separator {separator!r}")
        else:
            key, value = line.split(sep, 1)
            records.append((key, value))
    if not records:
        raise BuildError(f"{p} has no records (no non-empty lines)")
    return records


def _test(args: argparse.Namespace) -> int:
    from .data import _text
    from ..segments.batch import iter_batches
    from ..segments.records import build_batch, decode_records
    from ..smartmodule.chain import Chain, Stage
    from ..smartmodule.engine import ModuleCache, SmartModuleError

    params = dict(_key_value(kv) for kv in args.param)
    records = _read_input(args.input, args.key_separator)
    label, wasm = _test_module(args)
    loaded = ModuleCache().load(wasm)
    try:
        instance = loaded.instantiate(params)
    except SmartModuleError as e:
        raise KolkError(f"{label} ({loaded.kind}) cannot start: {e.reason}: {e}") from None
    chain = Chain([Stage(label, instance)])
    out = chain.apply(build_batch(records, base_offset=0), TEST_BATCH_BYTES_MAX)
    results = []
    if out:
        for pos, _h in iter_batches(out, TEST_BATCH_BYTES_MAX, shared_offsets=True):
            results.extend(decode_records(out, pos))
    shown = [{"offset": r.offset, "key": _text(r.key), "value": _text(r.value)} for r in results]
    value: dict[str, Any] = {"module": label, "kind": loaded.kind, "records_in": len(records),
                             "records_out": len(results), "records": shown}
    lines = [f"{r['offset']}  " + (f"{r['key']} => " if r["key"] is not None else "")
             + ("null" if r["value"] is None else r["value"]) for r in shown]
    if loaded.kind == "aggregate":
        value["accumulator"] = _shown_bytes(instance.accumulator or b"")
        lines.append(f"accumulator: {value['accumulator']}")
    if not args.json:
        print(f"{label} ({loaded.kind}): {len(records)} record(s) in, {len(results)} out", file=sys.stderr)
    _print(args, value, "\n".join(lines) if lines else "(no records out)")
    return 0


def _shown_bytes(b: bytes) -> str:
    """Printable UTF-8 as text, anything else (a binary accumulator) as base64."""
    try:
        text = b.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\n\t" for c in text):
        return text
    return "base64:" + base64.b64encode(b).decode()


def dispatch(args: argparse.Namespace) -> int:
    from ..smartmodule.chain import ChainError
    from ..smartmodule.engine import SmartModuleError

    try:
        if args.action == "build":
            return _build(args)
        if args.action == "test":
            return _test(args)
        return run(lambda: _run(args))
    except SmartModuleError as e:
        message = f"the module is refused: {e.reason}: {e}"
    except (KolkError, BuildError, ChainError) as e:
        message = str(e)
    except OSError as e:
        message = f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")
    lines = message.strip().splitlines()
    print(f"kolk smartmodule {args.action}: {lines[0] if lines else 'failed'}", file=sys.stderr)
    return 1
