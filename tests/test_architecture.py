"""The import directions of DESIGN.md §1 and docs/architecture.md, checked on the source.

Only imports at module level count (an import inside a function is a deliberate lazy load):
``segments`` and ``raft`` import nothing of kolk; ``security`` and ``smartmodule`` import only
the record-batch format (``segments.batch``, ``segments.records``, ``segments.errors``: a
leaf that imports nothing else); ``metadata`` imports ``raft``; the wire protocol
(``core/protocol``) imports nothing of kolk; and no two modules import each other in a circle.

Inside ``core/``, the rooms (docs/architecture.md, "Floor plan and import directions"): the
client (``core/client``) imports nothing of the servers (``core/sc``, ``core/spu``,
``core/node``) or of the command line (``core/cli``); the SC and the SPU import nothing of
each other or of the command line; what they share (``core/node``) imports neither of them.
These hold for every import, lazy ones included: a room boundary is about who talks to whom,
not about load order. And ``import kolk`` loads none of the servers or the command line.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = {"core": "kolk", "raft": "kolk.raft", "metadata": "kolk.metadata", "segments": "kolk.segments",
         "security": "kolk.security", "smartmodule": "kolk.smartmodule"}
FORMAT_LEAF = {"kolk.segments.batch", "kolk.segments.records", "kolk.segments.errors"}


def _modules() -> dict[str, str]:
    """Module name -> file path, for every module of the kolk package."""
    out = {}
    for folder, package in PARTS.items():
        base = os.path.join(ROOT, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            rel = os.path.relpath(dirpath, base)
            if folder == "core" and rel.split(os.sep)[0] in PARTS:
                continue
            dirnames[:] = [d for d in dirnames if d not in ("examples", "sdk", "__pycache__")]
            for f in filenames:
                if not f.endswith(".py"):
                    continue
                parts = [package] + ([] if rel == "." else rel.split(os.sep))
                name = ".".join(parts + ([] if f == "__init__.py" else [f[:-3]]))
                out[name] = os.path.join(dirpath, f)
    return out


MODULES = _modules()


def _imports(name: str, path: str, lazy: bool = False) -> set[str]:
    """kolk modules ``name`` imports at module level (not inside functions or TYPE_CHECKING);
    with ``lazy``, every import anywhere in the file."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def add(node: ast.stmt) -> None:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("kolk"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("kolk"):
                return
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.add(sub if sub in MODULES else mod)

    def visit(stmts: list[ast.stmt]) -> None:
        for node in stmts:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)
                continue
            add(node)

    if lazy:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                add(node)
    else:
        visit(tree.body)
    return {m for m in found if m in MODULES or m.rsplit(".", 1)[0] in MODULES}


def _graph(lazy: bool) -> dict[str, set[str]]:
    return {name: {m if m in MODULES else m.rsplit(".", 1)[0] for m in _imports(name, path, lazy)} - {name}
            for name, path in MODULES.items()}


GRAPH = _graph(lazy=False)
ALL_IMPORTS = _graph(lazy=True)


def _part(module: str) -> str:
    for package in sorted(PARTS.values(), key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    return module


def _violations(part: str, allowed: set[str], leaf_ok: bool = False) -> list[str]:
    bad = []
    for name, deps in GRAPH.items():
        if _part(name) != part:
            continue
        for d in deps:
            if _part(d) == part or _part(d) in allowed or (leaf_ok and d in FORMAT_LEAF):
                continue
            bad.append(f"{name} imports {d}")
    return sorted(bad)


@pytest.mark.parametrize("part,allowed,leaf_ok", [
    ("kolk.segments", set(), False),
    ("kolk.raft", set(), False),
    ("kolk.security", set(), True),
    ("kolk.smartmodule", set(), True),
    ("kolk.metadata", {"kolk.raft"}, False),
])
def test_import_directions(part: str, allowed: set[str], leaf_ok: bool) -> None:
    assert _violations(part, allowed, leaf_ok) == []


def test_the_batch_format_is_a_leaf() -> None:
    for name in FORMAT_LEAF:
        assert GRAPH[name] <= FORMAT_LEAF, f"{name} imports {GRAPH[name] - FORMAT_LEAF}"


def test_the_wire_protocol_imports_nothing_else_of_kolk() -> None:
    bad = [f"{n} imports {d}" for n, deps in GRAPH.items() if n.startswith("kolk.protocol")
           for d in deps if not d.startswith("kolk.protocol")]
    assert bad == []


# The rooms of core/ (docs/architecture.md) and the rooms each may never import, lazily or not.
ROOMS = ("kolk.protocol", "kolk.groups", "kolk.client", "kolk.sc", "kolk.spu", "kolk.node", "kolk.cli",
         "kolk.observe", "kolk.console")
SERVERS_AND_CLI = {"kolk.sc", "kolk.spu", "kolk.node", "kolk.cli"}


def _room(module: str) -> str | None:
    for room in ROOMS:
        if module == room or module.startswith(room + "."):
            return room
    return None


def test_every_room_is_seen() -> None:
    """The walk of core/ reaches every room's modules (a room missed would pass every rule)."""
    for room in ROOMS:
        assert room in MODULES, f"{room} is not a package the walk of core/ found"
        assert any(m.startswith(room + ".") for m in MODULES), f"no modules found in {room}"


@pytest.mark.parametrize("room,forbidden", [
    ("kolk.client", SERVERS_AND_CLI | {"kolk.observe", "kolk.console"}),
    ("kolk.sc", {"kolk.spu", "kolk.cli"}),
    ("kolk.spu", {"kolk.sc", "kolk.cli"}),
    ("kolk.node", {"kolk.sc", "kolk.spu", "kolk.cli"}),
    ("kolk.protocol", SERVERS_AND_CLI | {"kolk.client", "kolk.groups"}),
    ("kolk.groups", SERVERS_AND_CLI | {"kolk.client"}),  # pure: the client and the coordinator share it
    # What the SC and the SPU share to be seen (metrics, health, logs): below the servers, beside the wire.
    ("kolk.observe", SERVERS_AND_CLI | {"kolk.client", "kolk.groups", "kolk.console"}),
    # The SC's web console renders the client's cluster view; the SC starts it, never the reverse.
    ("kolk.console", {"kolk.sc", "kolk.spu", "kolk.cli", "kolk.node", "kolk.groups"}),
])
def test_room_boundaries(room: str, forbidden: set[str]) -> None:
    bad = sorted(f"{n} imports {d}" for n, deps in ALL_IMPORTS.items() if _room(n) == room
                 for d in deps if _room(d) in forbidden)
    assert bad == []


def test_transport_stands_on_protocol_and_security_only() -> None:
    """core/transport.py, used by every room, imports only the wire protocol and TLS."""
    bad = [d for d in ALL_IMPORTS["kolk.transport"]
           if not (d.startswith("kolk.protocol") or d.startswith("kolk.security"))]
    assert bad == []


def test_import_kolk_loads_no_server_and_no_cli() -> None:
    """An application's ``import kolk`` loads the client, not the servers or the command line
    (nor ``kolk demo``/``kolk bench``, which live in the command line)."""
    code = ("import kolk, sys, json; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['kolk', 'cli'], ['kolk', 'sc'], ['kolk', 'spu'], ['kolk', 'node']))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            strong(v)
    return out


def test_no_import_circles() -> None:
    assert _cycles() == []
