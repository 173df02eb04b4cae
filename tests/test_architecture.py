"""The import directions of DESIGN.md §1 and docs/architecture.md, checked on the source.

Only imports at module level count (an import inside a function is a deliberate lazy load):
``segments`` and ``raft`` import nothing of kolk; ``security`` and ``smartmodule`` import only
the record-batch format (``segments.batch``, ``segments.records``, ``segments.errors``: a
leaf that imports nothing else); ``metadata`` imports ``raft``; the wire protocol
(``core/protocol``) imports nothing of kolk; and no two modules import each other in a circle.
"""

from __future__ import annotations

import ast
import os

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


def _top_level_imports(name: str, path: str) -> set[str]:
    """kolk modules ``name`` imports at module level (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found: set[str] = set()

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
                    continue
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    found.add(sub if sub in MODULES else mod)
    visit(tree.body)
    return {m for m in found if m in MODULES or m.rsplit(".", 1)[0] in MODULES}


GRAPH = {name: {m if m in MODULES else m.rsplit(".", 1)[0] for m in _top_level_imports(name, path)} - {name}
         for name, path in MODULES.items()}


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
