"""A data directory: the partition logs of one SPU and the one RocksDB that indexes them.

Layout (``docs/format.md`` has the whole picture)::

    <data_dir>/
        kolk-data.json        marker: {"format": "kolk-data", "version": 1}
        index/                RocksDB, column families in index_db.py
        logs/<name>/          one directory per partition log, segment files inside

A directory without the marker is refused unless it is empty, so that pointing Kolk at the
wrong path never scribbles over someone else's files. RocksDB's own lock keeps a second
process out.
"""

from __future__ import annotations

import json
import os
import shutil

from .config import LogConfig
from .errors import LogClosedError, NotALogDirectoryError
from .index_db import IndexDb
from .log import Clock, PartitionLog, validate_log_name, wall_clock_ms
from .segment import fsync_directory

MARKER = "kolk-data.json"
FORMAT = "kolk-data"
VERSION = 1


class LogStore:
    def __init__(self, data_dir: str, *, create: bool = True, clock: Clock = wall_clock_ms) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self._clock = clock
        self._logs: dict[str, PartitionLog] = {}
        self._closed = False
        self._check_or_init(create)
        self.logs_dir = os.path.join(self.data_dir, "logs")
        os.makedirs(self.logs_dir, exist_ok=True)
        try:
            self.index = IndexDb(os.path.join(self.data_dir, "index"))
        except Exception as e:  # rocksdict raises plain Exception for lock and corruption errors
            raise NotALogDirectoryError(self.data_dir, f"its index cannot be opened: {e}") from e

    def _check_or_init(self, create: bool) -> None:
        marker = os.path.join(self.data_dir, MARKER)
        if os.path.exists(self.data_dir) and not os.path.isdir(self.data_dir):
            raise NotALogDirectoryError(self.data_dir, "it is a file, not a directory")
        if os.path.isdir(self.data_dir) and os.path.exists(marker):
            try:
                with open(marker, encoding="utf-8") as f:
                    meta = json.load(f)
            except (OSError, ValueError) as e:
                raise NotALogDirectoryError(self.data_dir, f"{MARKER} is unreadable: {e}") from e
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise NotALogDirectoryError(self.data_dir, f"{MARKER} does not say format {FORMAT!r}")
            if meta.get("version") != VERSION:
                raise NotALogDirectoryError(
                    self.data_dir, f"{MARKER} says version {meta.get('version')!r}; this Kolk reads {VERSION}")
            return
        if os.path.isdir(self.data_dir) and os.listdir(self.data_dir):
            raise NotALogDirectoryError(
                self.data_dir, f"it has no {MARKER} and is not empty; refusing to write into it")
        if not create:
            raise NotALogDirectoryError(self.data_dir, "it does not exist")
        os.makedirs(self.data_dir, exist_ok=True)
        tmp = marker + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"format": FORMAT, "version": VERSION}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, marker)
        fsync_directory(self.data_dir)

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"log store {self.data_dir} is closed")

    def open_log(self, name: str, config: LogConfig | None = None) -> PartitionLog:
        """Open the log ``name``, creating it if it does not exist. Recovery runs here."""
        self._check_open()
        validate_log_name(name)
        if name in self._logs:
            return self._logs[name]
        directory = os.path.join(self.logs_dir, name)
        if not os.path.isdir(directory):
            os.makedirs(directory)
            fsync_directory(self.logs_dir)
        log = PartitionLog(name, directory, self.index, config or LogConfig(), self._clock)
        self._logs[name] = log
        return log

    def list_logs(self) -> list[str]:
        self._check_open()
        return sorted(os.listdir(self.logs_dir))

    def delete_log(self, name: str) -> None:
        """Delete a log's files and index entries."""
        self._check_open()
        validate_log_name(name)
        log = self._logs.pop(name, None)
        if log is not None:
            log.close(sync=False)
            log.mark_deleted()
        from .index_db import COLUMN_FAMILIES, partition_key, prefix_end

        pkey = partition_key(name)
        for cf in COLUMN_FAMILIES:
            self.index.delete_range(cf, pkey, prefix_end(pkey))
        shutil.rmtree(os.path.join(self.logs_dir, name), ignore_errors=True)
        fsync_directory(self.logs_dir)

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
