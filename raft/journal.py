"""A Raft journal for pysyncobj that survives power loss.

pysyncobj 0.3.17 keeps its journal in an mmap it never flushes and writes term and vote
without fsync (../shared/DEPENDENCIES.md). This journal implements the same interface
(``pysyncobj.journal.Journal``) with files whose durability is explicit:

``journal.log`` — entries back to back, each::

    length u32 | crc u32 (CRC-32C of payload) | payload = index u64, term u64, command bytes

(little-endian). ``add`` and ``deleteEntriesFrom`` change the file without fsync and mark it
dirty; :meth:`DurableJournal.sync` makes every change so far durable with one fdatasync. The
node (node.py) calls it before any message leaves and before the leader counts its own copy,
so an acknowledged entry is always on disk. On open, the file is scanned and cut at the
first torn or corrupt entry: only an unacknowledged tail can be torn.

Compaction (``deleteEntriesTo``) and ``clear`` write a new file, fsync it, rename it over the
old one and fsync the directory, so a crash leaves either the old journal or the new one.

``journal.meta`` — JSON ``{"term", "voted_for", "commit_index"}``, replaced the same way
(temp file, fsync, rename, directory fsync). Term and vote are stored before
``setCurrentTerm`` returns, hence before any vote is answered; the commit index is a hint
stored once a second.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable

import crc32c as _crc32c
from pysyncobj.journal import Journal

_HEAD = struct.Struct("<II")
_PAYLOAD_HEAD = struct.Struct("<QQ")
ENTRY_BYTES_MAX = 64 << 20  # a metadata command larger than this is refused by the SC long before

Entry = tuple[bytes, int, int]  # (command, index, term), pysyncobj's shape


def fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(command: bytes, idx: int, term: int) -> bytes:
    payload = _PAYLOAD_HEAD.pack(idx, term) + bytes(command)
    return _HEAD.pack(len(payload), _crc32c.crc32c(payload)) + payload


def _replace_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_directory(os.path.dirname(path) or ".")


class DurableJournal(Journal):
    def __init__(self, path: str, on_sync: Callable[[str, int], None] | None = None) -> None:
        self.path = path
        self.meta_path = path + ".meta"
        self._on_sync = on_sync
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        for leftover in (path + ".tmp", self.meta_path + ".tmp"):
            if os.path.exists(leftover):
                os.unlink(leftover)
        self._entries: list[Entry] = []
        self._positions: list[int] = []  # byte position of each entry in the file
        self.torn_bytes = 0
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)  # it holds the policy source
        fsync_directory(directory)
        self._size = self._load()
        self._dirty = False
        self._meta = self._load_meta()
        self._meta_dirty = False
        self.syncs = 0

    # -- loading

    def _load(self) -> int:
        data = b""
        size = os.fstat(self._fd).st_size
        if size:
            data = os.pread(self._fd, size, 0)
        pos = 0
        while pos + _HEAD.size <= len(data):
            length, crc = _HEAD.unpack_from(data, pos)
            end = pos + _HEAD.size + length
            if length < _PAYLOAD_HEAD.size or length > ENTRY_BYTES_MAX or end > len(data):
                break
            payload = data[pos + _HEAD.size : end]
            if _crc32c.crc32c(payload) != crc:
                break
            idx, term = _PAYLOAD_HEAD.unpack_from(payload)
            if self._entries and idx != self._entries[-1][1] + 1:
                break
            self._entries.append((payload[_PAYLOAD_HEAD.size :], idx, term))
            self._positions.append(pos)
            pos = end
        if pos < len(data):
            # A torn or corrupt tail: never acknowledged (sync precedes every ack), so cut it.
            self.torn_bytes = len(data) - pos
            os.ftruncate(self._fd, pos)
            os.fsync(self._fd)
        return pos

    def _load_meta(self) -> dict:
        try:
            with open(self.meta_path, "rb") as f:
                meta = json.loads(f.read())
            if isinstance(meta, dict):
                return meta
        except FileNotFoundError:
            pass
        except ValueError as e:
            raise RuntimeError(f"{self.meta_path} is not valid JSON ({e}); it is written atomically, "
                               "so this is damage: restore it or remove the node and re-add it") from e
        return {}

    # -- durability

    def sync(self) -> None:
        """Make every change so far durable (one fdatasync), and the meta if it changed."""
        if self._dirty:
            os.fdatasync(self._fd)
            self._dirty = False
            self.syncs += 1
            if self._on_sync is not None:
                self._on_sync(self.path, self._size)

    def _store_meta(self) -> None:
        _replace_file(self.meta_path, json.dumps(self._meta, sort_keys=True).encode())
        self._meta_dirty = False
        if self._on_sync is not None:
            self._on_sync(self.meta_path, os.path.getsize(self.meta_path))

    @property
    def durable_size(self) -> int:
        return self._size if not self._dirty else -1

    # -- pysyncobj's Journal interface

    def add(self, command, idx, term) -> None:  # noqa: ANN001 - pysyncobj's signature
        if self._entries and idx != self._entries[-1][1] + 1:
            raise ValueError(f"journal entry {idx} does not follow {self._entries[-1][1]}")
        if len(command) + _PAYLOAD_HEAD.size > ENTRY_BYTES_MAX:
            raise ValueError(f"journal entry {idx} is {len(command)} bytes; at most "
                             f"{ENTRY_BYTES_MAX - _PAYLOAD_HEAD.size} fit")
        record = _encode(command, idx, term)
        written = os.pwrite(self._fd, record, self._size)
        if written != len(record):
            os.ftruncate(self._fd, self._size)
            raise OSError(f"short write to {self.path}: {written} of {len(record)} bytes")
        self._positions.append(self._size)
        self._entries.append((bytes(command), idx, term))
        self._size += len(record)
        self._dirty = True

    def clear(self) -> None:
        self._rewrite([])

    def deleteEntriesFrom(self, entryFrom) -> None:  # noqa: N802, ANN001
        if entryFrom >= len(self._entries):
            return
        cut = self._positions[entryFrom]
        del self._entries[entryFrom:]
        del self._positions[entryFrom:]
        os.ftruncate(self._fd, cut)
        self._size = cut
        self._dirty = True

    def deleteEntriesTo(self, entryTo) -> None:  # noqa: N802, ANN001
        self._rewrite(self._entries[entryTo:])

    def _rewrite(self, entries: list[Entry]) -> None:
        blob = b"".join(_encode(c, i, t) for c, i, t in entries)
        _replace_file(self.path, blob)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        self._entries = list(entries)
        self._positions = []
        pos = 0
        for c, i, t in entries:
            self._positions.append(pos)
            pos += _HEAD.size + _PAYLOAD_HEAD.size + len(c)
        self._size = pos
        self._dirty = False
        if self._on_sync is not None:
            self._on_sync(self.path, self._size)

    def __getitem__(self, item):  # noqa: ANN001, ANN204
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        if self._fd < 0:
            return
        self.sync()
        if self._meta_dirty:
            self._store_meta()
        os.close(self._fd)
        self._fd = -1

    def setRaftCommitIndex(self, raftCommitIndex) -> None:  # noqa: N802, N803, ANN001
        if self._meta.get("commit_index") != raftCommitIndex:
            self._meta["commit_index"] = raftCommitIndex
            self._meta_dirty = True

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return self._meta.get("commit_index", 1)

    def setCurrentTerm(self, term, votedForNodeId) -> None:  # noqa: N802, N803, ANN001
        # Raft: term and vote are durable before any message that reflects them is sent.
        self._meta["term"] = term
        self._meta["voted_for"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:  # noqa: N802
        return self._meta.get("term", 0)

    def getVotedForNodeId(self):  # noqa: N802, ANN201
        return self._meta.get("voted_for")

    def onOneSecondTimer(self) -> None:  # noqa: N802
        if self._meta_dirty:
            self._store_meta()

    def flush(self) -> None:
        self.sync()
