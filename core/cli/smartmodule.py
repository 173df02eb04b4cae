"""``kolk smartmodule``: build, test and store SmartModules (docs/smartmodule-abi.md).

``generate`` (smartmodule_generate.py), ``build`` and ``test`` (smartmodule_test.py) run on
this machine only (clang for a ``.c`` file, the engine for the rest); ``create``, ``list``,
``describe`` and ``delete`` talk to any SC, where a module is the object ``NAME@VERSION`` and a
version, once stored, never changes. Errors print one line
naming what was wrong and exit with status 1; ``--json`` prints machine output.

Also here: the ``--smartmodule NAME[@VERSION] [-p KEY=VALUE ...]`` options that ``kolk
produce`` and ``kolk consume`` take, in chain order.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import pathlib
import sys
import time
from typing import Any

from ..client.admin import AdminClient, run
from ..metadata.specs import SmartModuleSpec, SpecError
from ..protocol.errors import KolkError, NotFoundError, VersionConflictError
from ..smartmodule.build import BuildError, load_source
from .admin import _print, _sc_option, _table, client_tls, resolve_sc

# The engine (wasmtime) is imported by the commands that run a module, not by every `kolk`.

COMMANDS = ("smartmodule",)
KIND = "smartmodule"  # the metadata object kind
SHA_SHOWN = 12  # hex digits of sha256 in tables


# ---------------------------------------------------------------- chain options of produce/consume

class _StageAction(argparse.Action):
    """--smartmodule NAME[@VERSION] (or test's --module FILE_OR_NAME): starts a new stage of the chain."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        chain = list(getattr(namespace, self.dest, None) or [])
        chain.append((values, {}))
        setattr(namespace, self.dest, chain)


class _ParamAction(argparse.Action):
    """-p/--param KEY=VALUE: a parameter of the most recent stage.

    ``stage_flag``: the option that starts a stage, for the error. ``positional_stage``: a
    parameter before any stage belongs to the command's positional module (``kolk smartmodule
    test MODULE -p K=V``), kept in a stage whose name is None until the positional fills it."""

    def __init__(self, *args: Any, stage_flag: str = "--smartmodule", positional_stage: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stage_flag = stage_flag
        self.positional_stage = positional_stage

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        chain = list(getattr(namespace, self.dest, None) or [])
        if not chain and self.positional_stage:
            chain.append((None, {}))
        if not chain:
            # `-p 5` is -p/--param, not a partition (kafka's -p habit): say which flag was meant.
            hint = f" (did you mean --partition {values}?)" if str(values).isdigit() else ""
            parser.error(f"{option_string} {values}: a parameter follows the {self.stage_flag} it belongs to{hint}")
        key, value = _key_value(values, parser)
        if key in chain[-1][1]:
            parser.error(f"{option_string} {values}: parameter {key!r} is given twice for one stage")
        chain[-1][1][key] = value
        setattr(namespace, self.dest, chain)


def add_chain_options(p: argparse.ArgumentParser, flag: str = "--smartmodule", dest: str = "smartmodules",
                      metavar: str = "NAME[@VERSION]", help: str = "run this stored SmartModule on the SPU "
                                                                 "(repeat for a chain, in order)",
                      positional_stage: bool = False) -> None:
    """``flag`` starting a stage, each followed by its ``-p KEY=VALUE``s, into ``dest`` as
    ``[(name, {key: value}), ...]`` in chain order."""
    p.add_argument(flag, dest=dest, action=_StageAction, metavar=metavar, help=help)
    before = f"MODULE or {flag}" if positional_stage else flag
    p.add_argument("-p", "--param", dest=dest, action=_ParamAction, metavar="KEY=VALUE", stage_flag=flag,
                   positional_stage=positional_stage, help=f"a parameter of the {before} before it (repeatable)")


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
    c.add_argument("file", nargs="?", metavar="FILE", help="the module: .wasm, .wat, .c, .rs or .ts")
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
    b = ssub.add_parser("build", help="compile a module's source (.c with clang, .rs with rustc, .ts with asc, .wat assembled) "
                                      "and check it")
    b.add_argument("file", metavar="FILE", help="a .c, .rs, .ts or .wat file")
    b.add_argument("-o", "--output", metavar="OUT.wasm", help="default: FILE.wasm beside FILE")
    b.add_argument("--json", action="store_true", help="print JSON")
    from .smartmodule_generate import add_generate_command
    from .smartmodule_test import add_test_command

    add_test_command(ssub)
    add_generate_command(ssub)


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


async def stored(client: AdminClient, name: str) -> dict[str, Any]:
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
    from ..smartmodule.compiler import Compiler
    from ..smartmodule.limits import Limits

    if bool(args.file) == bool(args.wasm):
        raise KolkError("give the module once: FILE or --wasm FILE")
    path = args.file or args.wasm
    wasm = load_source(path)
    # What the SC would refuse, refused here by the same check, in a worker under the same
    # compile limits (a module that takes minutes to compile is refused in 10 s, not waited for).
    loaded, _ = await Compiler(Limits()).compile(wasm, hashlib.sha256(wasm).hexdigest(), artifact=False)
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
        obj = await stored(client, args.name)
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
    from ..smartmodule.validate import validate_module

    src = pathlib.Path(args.file)
    if src.suffix.lower() == ".wasm":
        raise BuildError(f"{src}: a .wasm file needs no build (test it, or create it as it is)")
    wasm = load_source(src)  # by the suffix: clang for .c, the assembler for .wat
    loaded, _ = validate_module(wasm)  # what create (and the SC) would refuse is not written
    out = pathlib.Path(args.output) if args.output else src.with_suffix(".wasm")
    out.write_bytes(wasm)
    _print(args, {"path": str(out), "kind": loaded.kind, "init": loaded.has_init, "size": len(wasm),
                  "sha256": loaded.sha256},
           f"built {out}: {loaded.kind}, {len(wasm)} bytes, sha256 {loaded.sha256[:SHA_SHOWN]}")
    return 0


def dispatch(args: argparse.Namespace) -> int:
    from ..smartmodule.chain import ChainError
    from ..smartmodule.engine import SmartModuleError
    from ..smartmodule.testinput import TestInputError

    try:
        if args.action == "build":
            return _build(args)
        if args.action == "test":
            from .smartmodule_test import run_test

            return run_test(args)
        if args.action == "generate":
            from .smartmodule_generate import run_generate

            return run_generate(args)
        return run(lambda: _run(args))
    except SmartModuleError as e:
        message = f"the module is refused: {e.reason}: {e}"
    except (KolkError, BuildError, ChainError, TestInputError) as e:
        message = str(e)
    except OSError as e:
        message = f"{e.filename or ''}: {e.strerror or e}".lstrip(": ")
    lines = message.strip().splitlines()
    print(f"kolk smartmodule {args.action}: {lines[0] if lines else 'failed'}", file=sys.stderr)
    return 1
