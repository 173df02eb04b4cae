"""`kolk smartmodule build` of sources that are not ordinary files: each refused in one line
naming the path, without opening it (a FIFO would block the build, /dev/zero never ends), and a
path with spaces and shell metacharacters built as any other (asc runs without a shell)."""

from __future__ import annotations

import os
import pathlib

import pytest

from kolk.smartmodule.build import BuildError, build_source

FILTER = ('import { Record } from "kolk-smartmodule/record";\n'
          "export function filter(r: Record): bool { return r.value.length > 0; }\n")


@pytest.mark.parametrize("make", ["fifo", "directory", "symlink to /dev/zero"])
def test_a_source_that_is_not_a_regular_file_is_refused_without_being_opened(tmp_path: pathlib.Path, make: str) -> None:
    p = tmp_path / "m.ts"
    if make == "fifo":
        os.mkfifo(p)
    elif make == "directory":
        p.mkdir()
    else:
        p.symlink_to("/dev/zero")
    with pytest.raises(BuildError, match=rf"^{p} is not a regular file$"):
        build_source(p)


def test_a_100_mb_source_is_refused_by_its_size_before_it_is_read(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "big.ts"
    with open(p, "wb") as f:
        f.truncate(100 << 20)  # sparse: nothing written, nothing read
    with pytest.raises(BuildError, match=rf"^{p} is 104857600 bytes, more than 4194304$"):
        build_source(p)


def test_a_path_with_spaces_and_shell_metacharacters_builds(tmp_path: pathlib.Path) -> None:
    d = tmp_path / "a dir; $(touch PWNED) `id`"
    d.mkdir()
    p = d / "my module; rm -rf x & $HOME.ts"
    p.write_text(FILTER)
    wasm = build_source(p, d / "out.wasm")
    assert wasm[:4] == b"\0asm" and (d / "out.wasm").read_bytes() == wasm
    assert not (d / "PWNED").exists() and not (tmp_path / "PWNED").exists() and not pathlib.Path("PWNED").exists()
