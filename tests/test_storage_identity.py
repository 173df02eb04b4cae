"""The storage id of a data directory (DESIGN.md §5, "Storage identity"; segments/store.py).

Every data directory carries a random storage id in its marker, made once when the directory
is created and never again, so that a replica that comes back on a new or wiped disk is told
apart from one that kept its data. These tests use real directories and a real RocksDB.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from kolk.segments import LogStore, NotALogDirectoryError, build_batch

MARKER = "kolk-data.json"
NAME = "orders-0"


def marker(data_dir: Path) -> dict:
    return json.loads((data_dir / MARKER).read_text(encoding="utf-8"))


def store_id(data_dir: Path) -> tuple[str, bool]:
    """Open and close the store; its storage id and whether this open created it."""
    store = LogStore(str(data_dir))
    try:
        return store.storage_id, store.created
    finally:
        store.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.mark.parametrize("before", ["missing", "empty"])
def test_a_new_directory_gets_a_storage_id_once(data_dir: Path, before: str) -> None:
    """Creating a data directory (missing or empty) makes a uuid4 storage id and writes it
    to the marker; every later open reads the same id and says it created nothing."""
    if before == "empty":
        data_dir.mkdir()
    sid, created = store_id(data_dir)
    assert created is True
    assert re.fullmatch(r"[0-9a-f]{32}", sid), sid
    assert marker(data_dir) == {"format": "kolk-data", "version": 1, "storage_id": sid}
    for _ in range(2):
        assert store_id(data_dir) == (sid, False)
    assert marker(data_dir)["storage_id"] == sid
    assert sorted(os.listdir(data_dir)) == ["index", MARKER, "logs"]


def test_a_wiped_directory_gets_a_new_storage_id(data_dir: Path) -> None:
    """A directory emptied (a new disk, a wiped one) is a new directory: a new storage id,
    so the replica cannot pass for the one that held the data."""
    old, _ = store_id(data_dir)
    for entry in data_dir.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    new, created = store_id(data_dir)
    assert created is True and new != old
    shutil.rmtree(data_dir)
    newer, created = store_id(data_dir)
    assert created is True and newer not in (old, new)


def test_an_old_marker_gets_a_storage_id_added(data_dir: Path) -> None:
    """A marker written by an older Kolk (no storage_id) gets one on open, written in place of
    the old marker with nothing left beside it; the data stays, the open says it created
    nothing, and the id is the same on every later open."""
    store = LogStore(str(data_dir))
    store.open_log(NAME).append(build_batch([(b"k", b"kept")]))
    store.close()
    (data_dir / MARKER).write_text(json.dumps({"format": "kolk-data", "version": 1}), encoding="utf-8")

    store = LogStore(str(data_dir))
    try:
        sid, created = store.storage_id, store.created
        assert store.open_log(NAME).log_end_offset == 1
    finally:
        store.close()
    assert created is False
    assert re.fullmatch(r"[0-9a-f]{32}", sid), sid
    assert marker(data_dir) == {"format": "kolk-data", "version": 1, "storage_id": sid}
    assert sorted(os.listdir(data_dir)) == ["index", MARKER, "logs"]
    assert store_id(data_dir) == (sid, False)


@pytest.mark.parametrize("bad", ["abc", "A" * 32, "g" * 32, "0" * 33, "", 12345, None, ["0" * 32]])
def test_a_malformed_storage_id_is_refused(data_dir: Path, bad: object) -> None:
    """A storage_id that is not 32 lowercase hex digits is refused with NotALogDirectoryError
    naming the marker file, the field and the value; the marker is left as it was (the
    directory's identity cannot be trusted, so it is not replaced either)."""
    store_id(data_dir)
    raw = json.dumps({"format": "kolk-data", "version": 1, "storage_id": bad})
    (data_dir / MARKER).write_text(raw, encoding="utf-8")
    with pytest.raises(NotALogDirectoryError) as e:
        LogStore(str(data_dir))
    message = str(e.value)
    assert MARKER in message and "'storage_id'" in message and repr(bad) in message, message
    assert "32 lowercase hex digits" in message
    assert (data_dir / MARKER).read_text(encoding="utf-8") == raw


def test_a_marker_left_half_written_by_a_crash_does_not_block_creation(data_dir: Path) -> None:
    """A crash while the marker of a new directory was being written leaves only the file
    beside it; the next open creates the directory as new and removes the leftover."""
    data_dir.mkdir()
    (data_dir / f"{MARKER}.tmp").write_text('{"format": "kol', encoding="utf-8")
    sid, created = store_id(data_dir)
    assert created is True and marker(data_dir)["storage_id"] == sid
    assert sorted(os.listdir(data_dir)) == ["index", MARKER, "logs"]


def test_a_directory_of_other_files_is_still_refused(data_dir: Path) -> None:
    """The storage id changes nothing for a directory that is not Kolk's: it is refused, and
    no marker or id is written into it."""
    data_dir.mkdir()
    (data_dir / "notes.txt").write_text("someone else's", encoding="utf-8")
    with pytest.raises(NotALogDirectoryError, match="no kolk-data.json and is not empty"):
        LogStore(str(data_dir))
    assert os.listdir(data_dir) == ["notes.txt"]
