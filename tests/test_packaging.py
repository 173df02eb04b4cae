"""The wheel holds every module and data file of every folder, mapped into the one ``kolk``
namespace (DESIGN.md §1), and the installed wheel imports without the source tree."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA_SUFFIXES = (".capnp", ".h", ".wat", ".c", ".rs", ".ts")  # .c, .rs, .ts: the SmartModule examples and SDKs
NOT_SOURCE = ("__pycache__", "node_modules")  # npm installs the AssemblyScript compiler in the tree: not ours


def _package_dirs() -> dict[str, str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]["package-dir"]


def _expected_files() -> set[str]:
    expected = set()
    for package, folder in _package_dirs().items():
        base = ROOT / folder
        for path in base.rglob("*"):
            if any(p in path.parts for p in NOT_SOURCE) or not path.is_file():
                continue
            if path.suffix == ".py" or path.suffix in DATA_SUFFIXES:
                rel = path.relative_to(base).as_posix()
                expected.add(package.replace(".", "/") + "/" + rel)
    return expected


def _tracked_copy(dest: pathlib.Path) -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    names = [n for n in files.decode().split("\0") if n]
    # Files written but not yet committed count too: the wheel must take what is on disk.
    for folder in ["core", "raft", "metadata", "segments", "security", "smartmodule"]:
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and not any(p in path.parts for p in NOT_SOURCE):
                names.append(path.relative_to(ROOT).as_posix())
    for name in set(names + ["pyproject.toml", "README.md"]):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def test_wheel_contains_every_module_and_data_file(tmp_path: pathlib.Path) -> None:
    """Every .py and data file under core/, raft/, metadata/, segments/, security/ and
    smartmodule/ is in the wheel at its kolk.* path, and the wheel imports on its own."""
    src = tmp_path / "src"
    src.mkdir()
    _tracked_copy(src)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(src)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = out.glob("kolk-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _expected_files() - names
    assert not missing, f"the wheel lacks {sorted(missing)}"
    assert any(n.endswith("entry_points.txt") for n in names), "the kolk console script is not declared"

    # Installed on its own (no source tree on the path), every subpackage imports.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    code = ("import kolk, kolk.segments, kolk.raft, kolk.metadata, kolk.security, kolk.smartmodule;"
            "print(kolk.segments.__file__)")
    env = dict(os.environ, PYTHONPATH=str(target))
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r}); {code}"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith(str(target))
