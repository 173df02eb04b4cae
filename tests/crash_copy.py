"""What a kill -9 leaves of a live directory, for crash tests of the storage engine."""

from __future__ import annotations

import os
import shutil


def copy_live_directory(src: str, dst: str) -> None:
    """Copy the directory of an open RocksDB: what a kill -9 at this moment would leave.

    A background compaction may add and delete files meanwhile; a copy that saw the set of
    files change is thrown away and made again."""
    for _ in range(100):
        before = sorted(os.listdir(src))
        try:
            shutil.copytree(src, dst)
        except shutil.Error:
            shutil.rmtree(dst, ignore_errors=True)
            continue
        if sorted(os.listdir(src)) == before:
            return
        shutil.rmtree(dst)
    raise AssertionError(f"{src} kept changing while it was copied")
