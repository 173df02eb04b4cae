"""A data directory: the partition logs of one SPU and the one RocksDB that indexes them.

Layout (``docs/format.md`` has the whole picture)::

    <data_dir>/
        kolk-data.json        marker: {"format": "kolk-data", "version": 1, "storage_id": "<32 hex>"}
        index/                RocksDB, column families in index_db.py
        logs/<name>/          one directory per partition log, segment files inside

A directory without the marker is refused unless it is empty, so that pointing Kolk at the
wrong path never scribbles over someone else's files. RocksDB's own lock keeps a second
process out.

The **storage id** names this copy of the data (DESIGN.md §5): a random uuid4, made only when
the open creates the directory (missing or empty) and kept for as long as the directory
lives. An SPU registers with it, so a replica that comes back on a new or wiped disk (a new
id) is told apart from one that kept its data. Decision for a marker written by an older
Kolk, which has none: the open adds one rather than refusing the directory, because the data
in it is intact and refusing would only make an operator do the same by hand. The id is
written beside the marker, fsynced, renamed over it and the directory fsynced, so a crash
leaves the old marker or the new one; and only after RocksDB's lock is held, so that two
processes racing to open the directory cannot leave one believing an id the other replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid

from .config import LogConfig
from .errors import LogClosedError, LogFailedError, NotALogDirectoryError
from .index_db import COLUMN_FAMILIES, IndexDb, partition_key, prefix_end
from .log import Clock, PartitionLog, validate_log_name, wall_clock_ms
from .segment import fsync_directory

MARKER = "kolk-data.json"
FORMAT = "kolk-data"
VERSION = 1
STORAGE_ID = "storage_id"
_STORAGE_ID_SHAPE = re.compile(r"[0-9a-f]{32}")  # uuid4().hex


class LogStore:
    """The data directory at ``data_dir``, opened (and created if ``create`` and it is missing
    or empty).

    ``storage_id`` is the directory's storage id (32 lowercase hex digits); ``created`` is
    True when this open created the directory's marker, and with it the storage id.
    """

    def __init__(self, data_dir: str, *, create: bool = True, clock: Clock = wall_clock_ms) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self._clock = clock
        self._logs: dict[str, PartitionLog] = {}
        self._closed = False
        meta, self.created = self._check_or_init(create)
        self.logs_dir = os.path.join(self.data_dir, "logs")
        os.makedirs(self.logs_dir, mode=0o700, exist_ok=True)
        try:
            self.index = IndexDb(os.path.join(self.data_dir, "index"))
        except Exception as e:  # rocksdict raises plain Exception for lock and corruption errors
            raise NotALogDirectoryError(self.data_dir, f"its index cannot be opened: {e}") from e
        try:
            self.storage_id: str = self._storage_id(meta)
        except BaseException:
            self.index.close()
            raise

    def _storage_id(self, meta: dict) -> str:
        """The storage id, added to an older marker that has none. Runs under RocksDB's lock."""
        if STORAGE_ID not in meta:
            meta = self._read_marker()  # again: an earlier process may have added it meanwhile
            if STORAGE_ID not in meta:
                meta = {**meta, STORAGE_ID: uuid.uuid4().hex}
                _write_marker(self.data_dir, meta, replace=True)
        for entry in os.listdir(self.data_dir):
            if _is_marker_leftover(entry):  # a crash while writing a marker; ours is in place
                try:
                    os.unlink(os.path.join(self.data_dir, entry))
                except FileNotFoundError:
                    pass
        return meta[STORAGE_ID]

    def _read_marker(self) -> dict:
        try:
            with open(os.path.join(self.data_dir, MARKER), encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise NotALogDirectoryError(self.data_dir, f"{MARKER} is unreadable: {e}") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise NotALogDirectoryError(self.data_dir, f"{MARKER} does not say format {FORMAT!r}")
        if meta.get("version") != VERSION:
            raise NotALogDirectoryError(
                self.data_dir, f"{MARKER} says version {meta.get('version')!r}; this Kolk reads {VERSION}")
        sid = meta.get(STORAGE_ID, "")
        if STORAGE_ID in meta and not (isinstance(sid, str) and _STORAGE_ID_SHAPE.fullmatch(sid)):
            raise NotALogDirectoryError(
                self.data_dir, f"{MARKER} field {STORAGE_ID!r} is {sid!r}, not 32 lowercase hex digits "
                "as Kolk writes them; the marker was edited or damaged, and this directory's "
                "identity cannot be trusted")
        return meta

    def _check_or_init(self, create: bool) -> tuple[dict, bool]:
        """The marker's contents, and whether this call created it."""
        marker = os.path.join(self.data_dir, MARKER)
        if os.path.exists(self.data_dir) and not os.path.isdir(self.data_dir):
            raise NotALogDirectoryError(self.data_dir, "it is a file, not a directory")
        exists = os.path.isdir(self.data_dir)
        if exists and os.path.exists(marker):
            return self._read_marker(), False
        if exists and not all(_is_marker_leftover(e) for e in os.listdir(self.data_dir)):
            raise NotALogDirectoryError(
                self.data_dir, f"it has no {MARKER} and is not empty; refusing to write into it")
        if not create:
            raise NotALogDirectoryError(self.data_dir, "it does not exist")
        os.makedirs(self.data_dir, mode=0o700, exist_ok=True)
        meta = {"format": FORMAT, "version": VERSION, STORAGE_ID: uuid.uuid4().hex}
        if _write_marker(self.data_dir, meta, replace=False):
            return meta, True
        return self._read_marker(), False  # another process created it first; RocksDB's lock decides

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"log store {self.data_dir} is closed")

    def open_log(self, name: str, config: LogConfig | None = None) -> PartitionLog:
        """Open the log ``name``, creating it if it does not exist. Recovery runs here.

        A log open already is returned as it is, failed or not. When the disk refuses to open,
        read or create the log's files (read-only, EIO), this raises :class:`LogFailedError`.
        """
        self._check_open()
        validate_log_name(name)
        if name in self._logs:
            return self._logs[name]
        directory = os.path.join(self.logs_dir, name)
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, mode=0o700)
                fsync_directory(self.logs_dir)
            log = PartitionLog(name, directory, self.index, config or LogConfig(), self._clock)
        except OSError as e:
            raise LogFailedError(name, f"open of {directory}: {e}") from e
        self._logs[name] = log
        return log

    def close_log(self, name: str) -> None:
        """Close the open log ``name`` without an fsync (a failed or fenced log being reopened:
        recovery then checks what is on disk); the next :meth:`open_log` opens it again."""
        self._check_open()
        log = self._logs.pop(name, None)
        if log is not None:
            log.close(sync=False)

    def list_logs(self) -> list[str]:
        self._check_open()
        return sorted(os.listdir(self.logs_dir))

    def delete_log(self, name: str) -> None:
        """Delete a log's files and index entries; :meth:`open_log` then gives a new empty log.

        This is how a failed log (:class:`LogFailedError`) is rebuilt: it works on a failed
        log whenever the disk still lets files be deleted, and raises LogFailedError when it
        does not (the index entries are then kept). The files go first: a crash before the
        index entries are gone leaves a missing log whose index state remains, which the next
        open reports as short of its high watermark, never as a log that kept its records.
        """
        self._check_open()
        validate_log_name(name)
        log = self._logs.pop(name, None)
        if log is not None:
            log.close(sync=False)
            log.mark_deleted()
        directory = os.path.join(self.logs_dir, name)
        try:
            if os.path.lexists(directory):
                shutil.rmtree(directory)
            fsync_directory(self.logs_dir)
        except OSError as e:
            raise LogFailedError(name, f"deletion of {directory}: {e}") from e
        pkey = partition_key(name)
        for cf in COLUMN_FAMILIES:
            self.index.delete_range(cf, pkey, prefix_end(pkey))
        # The index has no WAL: without a flush, a crash would bring the old state back.
        self.index.flush()

    def close(self, sync: bool = True) -> None:
        """Close every log (fsyncing unless ``sync=False``, which tests use to crash)."""
        if self._closed:
            return
        for log in self._logs.values():
            log.close(sync=sync)
        self._logs.clear()
        self._closed = True
        self.index.close()

    def __enter__(self) -> "LogStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_marker_leftover(entry: str) -> bool:
    """A marker being written, or left half-written by a crash (older Kolk wrote ``.tmp``)."""
    return entry.startswith(MARKER + ".") and entry.endswith(".tmp")


def _write_marker(data_dir: str, meta: dict, *, replace: bool) -> bool:
    """Write the marker crash-safely: into a file beside it, fsynced, then renamed over it
    (``replace``) or, to create it, linked to its name only if there is none yet (False when
    another process was first); then the directory is fsynced, so the name survives a crash."""
    marker = os.path.join(data_dir, MARKER)
    tmp = os.path.join(data_dir, f"{MARKER}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
            json.dump(meta, f)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, marker)
        else:
            try:
                os.link(tmp, marker)
            except FileExistsError:
                return False
    finally:
        try:
            os.unlink(tmp)  # gone already after a rename
        except FileNotFoundError:
            pass
    fsync_directory(data_dir)
    return True
