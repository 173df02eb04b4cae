"""File-level tests of ``kolk.raft.journal.DurableJournal`` (no network, no pysyncobj node).

What the journal promises (raft/journal.py, DESIGN.md §3) and what these tests hold it to:

* entries, term, vote and commit index survive a close and a reopen;
* on open, a torn or corrupt tail (cut anywhere inside the last entry, garbage appended, a
  flipped byte caught by the CRC) is cut back to the last whole entry, ``torn_bytes`` says how
  much was cut, and every earlier entry survives;
* ``deleteEntriesFrom``, compaction (``deleteEntriesTo``) and ``clear`` leave a journal that
  reopens to exactly the entries kept, and a crash between writing ``journal.log.tmp`` and the
  rename leaves the old journal intact (the temp file is removed on open);
* ``setCurrentTerm`` is fsynced before it returns; the commit index is a hint stored on the
  one-second timer;
* the ``on_sync(path, size)`` hook reports the durable size after each ``sync()`` and each
  rewrite, and cutting the file back to any length between the last reported size and its
  current size reopens to a prefix of the entries that holds every entry that was synced.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import tempfile

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

import kolk.raft.journal as journal_mod
from kolk.raft.journal import DurableJournal

HEAD = 8  # length u32 + crc u32
PAYLOAD_HEAD = 16  # index u64 + term u64


def record_size(command: bytes) -> int:
    return HEAD + PAYLOAD_HEAD + len(command)


def make_entries(n: int, start: int = 1, term: int = 1) -> list[tuple[bytes, int, int]]:
    rnd = random.Random(n * 7919 + start)
    out = []
    for i in range(n):
        size = rnd.choice([0, 1, 7, 33, 200])
        out.append((bytes(rnd.getrandbits(8) for _ in range(size)), start + i, term + i // 4))
    return out


def fill(path: str, entries, **kw) -> DurableJournal:
    j = DurableJournal(path, **kw)
    for e in entries:
        j.add(*e)
    j.sync()
    return j


def close(j: DurableJournal) -> None:
    j._destroy()


def crash(j: DurableJournal) -> None:
    """Drop a journal without any final sync or meta store (the process dies)."""
    if j._fd >= 0:
        os.close(j._fd)
        j._fd = -1


def entries_of(j: DurableJournal) -> list[tuple[bytes, int, int]]:
    return [tuple(e) for e in j[:]]


def offsets(entries) -> list[int]:
    """Byte offset at which each entry starts, plus the end of the file."""
    pos, out = 0, []
    for c, _, _ in entries:
        out.append(pos)
        pos += record_size(c)
    out.append(pos)
    return out


# ------------------------------------------------------------------------------- round trip


def test_entries_term_vote_commit_round_trip(tmp_path):
    """Entries (empty, binary and large commands), term, vote and commit index written by one
    DurableJournal are read back identically by the next one on the same path, and the file
    holds exactly the documented framing (length, CRC-32C, index, term, command)."""
    path = str(tmp_path / "journal.log")
    entries = make_entries(20) + [(b"\x00" * 70_000, 21, 9)]
    j = fill(path, entries)
    j.setCurrentTerm(9, "127.0.0.1:4000")
    j.setRaftCommitIndex(17)
    assert len(j) == len(entries) and entries_of(j) == entries
    assert j[-1] == entries[-1] and j[3:5] == entries[3:5]
    close(j)

    assert os.path.getsize(path) == offsets(entries)[-1]
    with open(path, "rb") as f:
        raw = f.read()
    import crc32c

    length, crc = struct.unpack_from("<II", raw, 0)
    payload = raw[HEAD : HEAD + length]
    assert crc == crc32c.crc32c(payload)
    assert struct.unpack_from("<QQ", payload) == (1, 1) and payload[16:] == entries[0][0]

    j2 = DurableJournal(path)
    try:
        assert entries_of(j2) == entries
        assert j2.torn_bytes == 0
        assert j2.getCurrentTerm() == 9
        assert j2.getVotedForNodeId() == "127.0.0.1:4000"
        assert j2.getRaftCommitIndex() == 17
        # The journal keeps going after a reopen.
        j2.add(b"next", 22, 9)
        j2.sync()
    finally:
        close(j2)
    j3 = DurableJournal(path)
    assert entries_of(j3) == entries + [(b"next", 22, 9)]
    close(j3)


def test_fresh_journal_defaults(tmp_path):
    """A journal that never existed opens empty with term 0, no vote and commit index 1
    (pysyncobj's defaults), and refuses an entry whose index does not follow the last one."""
    j = DurableJournal(str(tmp_path / "d" / "journal.log"))
    try:
        assert len(j) == 0 and j.getCurrentTerm() == 0 and j.getVotedForNodeId() is None
        assert j.getRaftCommitIndex() == 1 and j.torn_bytes == 0
        j.add(b"a", 5, 1)
        with pytest.raises(ValueError):
            j.add(b"b", 7, 1)
        assert entries_of(j) == [(b"a", 5, 1)]
    finally:
        close(j)


# -------------------------------------------------------------------------------- torn tail


def test_torn_tail_cut_at_every_byte_of_last_entry(tmp_path):
    """Cutting the file at every byte inside the last entry (header and payload) reopens to
    every earlier entry, reports the partial record as ``torn_bytes``, cuts it off the file
    durably, and the journal can be appended to and reopened afterwards."""
    entries = make_entries(6) + [(b"last-command-" + bytes(range(40)), 7, 3)]
    src = str(tmp_path / "src" / "journal.log")
    close(fill(src, entries))
    with open(src, "rb") as f:
        full = f.read()
    start = offsets(entries)[-2]
    assert len(full) == offsets(entries)[-1]
    work = str(tmp_path / "w" / "journal.log")
    os.makedirs(os.path.dirname(work))
    for cut in range(start, len(full)):
        with open(work, "wb") as f:
            f.write(full[:cut])
        j = DurableJournal(work)
        try:
            assert entries_of(j) == entries[:-1], cut
            assert j.torn_bytes == cut - start, cut
            assert os.path.getsize(work) == start, cut
            j.add(b"again", 7, 4)
            j.sync()
        finally:
            close(j)
        j = DurableJournal(work)
        assert entries_of(j) == entries[:-1] + [(b"again", 7, 4)] and j.torn_bytes == 0, cut
        close(j)


@pytest.mark.parametrize("seed", range(12))
def test_random_garbage_appended_is_cut(tmp_path, seed):
    """Random garbage (or zeros, as a file extended by a crash) after the last whole entry is
    cut on open; every entry survives and ``torn_bytes`` is the garbage's length."""
    rnd = random.Random(seed)
    entries = make_entries(rnd.randint(1, 8))
    path = str(tmp_path / "journal.log")
    close(fill(path, entries))
    n = rnd.choice([1, 3, 7, 8, 23, 24, 25, 100, 4096])
    garbage = bytes(n) if seed % 3 == 0 else bytes(rnd.getrandbits(8) for _ in range(n))
    with open(path, "ab") as f:
        f.write(garbage)
    j = DurableJournal(path)
    try:
        assert entries_of(j) == entries
        assert j.torn_bytes == n
        assert os.path.getsize(path) == offsets(entries)[-1]
    finally:
        close(j)


def test_flipped_byte_in_last_entry_is_caught(tmp_path):
    """A single flipped bit anywhere in the last entry's payload (index, term or command) fails
    its CRC: the entry is cut on open and every earlier entry survives. The same holds for a
    flip in its length or CRC field."""
    entries = make_entries(5) + [(b"payload-to-damage", 6, 2)]
    src = str(tmp_path / "src.log")
    close(fill(src, entries))
    with open(src, "rb") as f:
        full = f.read()
    start = offsets(entries)[-2]
    work = str(tmp_path / "journal.log")
    for pos in range(start, len(full)):
        for bit in (0x01, 0x80):
            damaged = bytearray(full)
            damaged[pos] ^= bit
            with open(work, "wb") as f:
                f.write(damaged)
            j = DurableJournal(work)
            try:
                assert entries_of(j) == entries[:-1], (pos, bit)
                assert j.torn_bytes == len(full) - start, (pos, bit)
            finally:
                close(j)


def test_largest_accepted_entry_reads_back(tmp_path):
    """An entry ``add`` accepts and ``sync`` makes durable is read back on open: the journal
    must not take an entry it would later cut as torn (a payload over ``ENTRY_BYTES_MAX``),
    which would silently drop it and every entry after it."""
    path = str(tmp_path / "journal.log")
    big = b"x" * (journal_mod.ENTRY_BYTES_MAX - PAYLOAD_HEAD + 1)
    j = DurableJournal(path)
    j.add(b"a", 1, 1)
    try:
        j.add(big, 2, 1)
    except (ValueError, OSError):
        accepted = False  # refusing it up front is a correct answer
    else:
        accepted = True
        j.add(b"b", 3, 1)
    j.sync()
    expected = entries_of(j)
    close(j)
    del big
    j = DurableJournal(path)
    try:
        got = [(len(c), i, t) for c, i, t in entries_of(j)]
        assert got == [(len(c), i, t) for c, i, t in expected], (
            f"accepted={accepted}; reopened {len(got)} of {len(expected)} entries, torn_bytes={j.torn_bytes}")
    finally:
        close(j)


# ----------------------------------------------------------------------- deletes and rewrites


def test_delete_entries_from_then_reopen(tmp_path):
    """``deleteEntriesFrom(k)`` keeps the first k entries (k past the end is a no-op, 0 empties
    it); the entries appended after the cut, possibly of a newer term, are what a reopen sees."""
    path = str(tmp_path / "journal.log")
    entries = make_entries(10)
    j = fill(path, entries)
    j.deleteEntriesFrom(10)
    j.deleteEntriesFrom(99)
    assert entries_of(j) == entries
    j.deleteEntriesFrom(6)
    assert entries_of(j) == entries[:6]
    new = [(b"new-%d" % i, 7 + i, 50) for i in range(3)]
    for e in new:
        j.add(*e)
    j.sync()
    assert os.path.getsize(path) == offsets(entries[:6] + new)[-1]
    crash(j)
    j = DurableJournal(path)
    assert entries_of(j) == entries[:6] + new and j.torn_bytes == 0
    j.deleteEntriesFrom(0)
    j.sync()
    assert len(j) == 0
    crash(j)
    j = DurableJournal(path)
    assert len(j) == 0 and os.path.getsize(path) == 0
    close(j)


def test_delete_entries_to_and_clear(tmp_path):
    """Compaction keeps the entries from ``entryTo`` on (and the journal keeps appending after
    them); ``clear`` empties it; both are what a reopen sees, and both report the new size."""
    path = str(tmp_path / "journal.log")
    reports = []
    entries = make_entries(12)
    j = fill(path, entries, on_sync=lambda p, s: reports.append((p, s)))
    j.deleteEntriesTo(8)
    assert entries_of(j) == entries[8:]
    assert reports[-1] == (path, offsets(entries[8:])[-1]) == (path, os.path.getsize(path))
    j.add(b"after", 13, 9)
    j.sync()
    crash(j)
    j = DurableJournal(path, on_sync=lambda p, s: reports.append((p, s)))
    assert entries_of(j) == entries[8:] + [(b"after", 13, 9)]
    j.clear()
    assert len(j) == 0 and reports[-1] == (path, 0) and os.path.getsize(path) == 0
    j.add(b"x", 40, 9)
    j.sync()
    crash(j)
    j = DurableJournal(path)
    assert entries_of(j) == [(b"x", 40, 9)]
    close(j)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("operation", ["deleteEntriesTo", "clear"])
def test_rewrite_crash_before_rename_keeps_old_journal(tmp_path, monkeypatch, operation):
    """A crash after ``journal.log.tmp`` was written and fsynced but before it was renamed
    over ``journal.log`` leaves the old journal: reopening gives every old entry and removes
    the temp file (which really held the new journal)."""
    path = str(tmp_path / "journal.log")
    entries = make_entries(9)
    j = fill(path, entries)
    j.setCurrentTerm(4, "n1")

    def replace_then_die(src, dst):
        raise _Crash(src)

    monkeypatch.setattr(journal_mod.os, "replace", replace_then_die)
    with pytest.raises(_Crash):
        if operation == "clear":
            j.clear()
        else:
            j.deleteEntriesTo(5)
    monkeypatch.undo()
    crash(j)
    tmp = path + ".tmp"
    expected_tmp_size = 0 if operation == "clear" else offsets(entries[5:])[-1]
    assert os.path.getsize(tmp) == expected_tmp_size  # the crash left the new journal behind

    j = DurableJournal(path)
    try:
        assert entries_of(j) == entries and j.torn_bytes == 0
        assert j.getCurrentTerm() == 4 and j.getVotedForNodeId() == "n1"
        assert not os.path.exists(tmp)
    finally:
        close(j)


def test_rewrite_crash_after_rename_gives_new_journal(tmp_path, monkeypatch):
    """A crash after the rename but before the directory fsync (the other side of the
    window) gives the new, compacted journal, with no temp file left."""
    path = str(tmp_path / "journal.log")
    entries = make_entries(9)
    j = fill(path, entries)

    def die(_path):
        raise _Crash()

    monkeypatch.setattr(journal_mod, "fsync_directory", die)
    with pytest.raises(_Crash):
        j.deleteEntriesTo(4)
    monkeypatch.undo()
    crash(j)
    j = DurableJournal(path)
    assert entries_of(j) == entries[4:] and not os.path.exists(path + ".tmp")
    close(j)


def test_meta_crash_before_rename_keeps_old_meta(tmp_path, monkeypatch):
    """A crash while ``journal.log.meta.tmp`` is written (before its rename) keeps the old
    term and vote, and the temp file is removed on open."""
    path = str(tmp_path / "journal.log")
    j = DurableJournal(path)
    j.setCurrentTerm(3, "a")

    def die(src, dst):
        raise _Crash(src)

    monkeypatch.setattr(journal_mod.os, "replace", die)
    with pytest.raises(_Crash):
        j.setCurrentTerm(4, "b")
    monkeypatch.undo()
    crash(j)
    assert os.path.exists(path + ".meta.tmp")
    j = DurableJournal(path)
    assert (j.getCurrentTerm(), j.getVotedForNodeId()) == (3, "a")
    assert not os.path.exists(path + ".meta.tmp")
    close(j)


# ------------------------------------------------------------------------------------- meta


def test_set_current_term_is_durable_when_it_returns(tmp_path, monkeypatch):
    """``setCurrentTerm`` writes term and vote to a temp file, fsyncs it, renames it and fsyncs
    the directory before it returns, and reports the meta file to ``on_sync``: a fresh
    DurableJournal on the same path sees them although the first one was never closed."""
    path = str(tmp_path / "journal.log")
    events: list[tuple] = []
    fd_paths: dict[int, str] = {}
    real_open, real_fsync, real_replace = os.open, os.fsync, os.replace

    def spy_open(p, flags, *a, **kw):
        fd = real_open(p, flags, *a, **kw)
        fd_paths[fd] = os.fspath(p)
        return fd

    def spy_fsync(fd):
        events.append(("fsync", fd_paths.get(fd, fd)))
        return real_fsync(fd)

    def spy_replace(a, b):
        events.append(("replace", os.fspath(a), os.fspath(b)))
        return real_replace(a, b)

    reports = []
    j = DurableJournal(path, on_sync=lambda p, s: reports.append((p, s)))
    monkeypatch.setattr(journal_mod.os, "open", spy_open)
    monkeypatch.setattr(journal_mod.os, "fsync", spy_fsync)
    monkeypatch.setattr(journal_mod.os, "replace", spy_replace)
    j.setCurrentTerm(7, "127.0.0.1:9")
    monkeypatch.undo()
    meta = path + ".meta"
    assert events == [
        ("fsync", meta + ".tmp"),
        ("replace", meta + ".tmp", meta),
        ("fsync", str(tmp_path)),
    ]
    assert reports == [(meta, os.path.getsize(meta))]

    other = DurableJournal(path)  # the first journal is still open and was never closed
    assert other.getCurrentTerm() == 7 and other.getVotedForNodeId() == "127.0.0.1:9"
    j.setCurrentTerm(8, None)
    other2 = DurableJournal(path)
    assert other2.getCurrentTerm() == 8 and other2.getVotedForNodeId() is None
    for x in (j, other, other2):
        crash(x)


def test_commit_index_stored_on_one_second_timer(tmp_path):
    """The commit index is a hint: ``setRaftCommitIndex`` only marks it, the one-second timer
    stores it (durably, reported to ``on_sync``, keeping term and vote), and a timer with
    nothing new stores nothing."""
    path = str(tmp_path / "journal.log")
    reports = []
    j = DurableJournal(path, on_sync=lambda p, s: reports.append((p, s)))
    j.setCurrentTerm(2, "v")
    reports.clear()
    j.setRaftCommitIndex(41)
    assert j.getRaftCommitIndex() == 41
    early = DurableJournal(path)
    assert early.getRaftCommitIndex() == 1  # not stored yet
    crash(early)
    assert reports == []
    j.onOneSecondTimer()
    assert reports == [(path + ".meta", os.path.getsize(path + ".meta"))]
    fresh = DurableJournal(path)
    assert (fresh.getRaftCommitIndex(), fresh.getCurrentTerm(), fresh.getVotedForNodeId()) == (41, 2, "v")
    j.onOneSecondTimer()
    j.setRaftCommitIndex(41)
    j.onOneSecondTimer()
    assert len(reports) == 1
    crash(j)
    crash(fresh)


# ---------------------------------------------------------------------------- on_sync hook


def test_on_sync_reports_size_after_each_sync(tmp_path):
    """``sync()`` reports ``(path, size)`` with the file's size once there is something to make
    durable, and nothing when nothing changed since the last sync; a truncation is reported
    by the next sync."""
    path = str(tmp_path / "journal.log")
    reports = []
    j = DurableJournal(path, on_sync=lambda p, s: reports.append((p, s)))
    j.sync()
    assert reports == []
    for i in range(1, 6):
        j.add(b"c%d" % i, i, 1)
        j.sync()
        assert reports[-1] == (path, os.path.getsize(path))
    n = len(reports)
    j.sync()
    j.flush()
    assert len(reports) == n
    j.deleteEntriesFrom(2)
    j.sync()
    assert reports[-1] == (path, os.path.getsize(path)) == (path, offsets(entries_of(j))[-1])
    close(j)


class JournalPowerLoss(RuleBasedStateMachine):
    """Random add / deleteEntriesFrom / deleteEntriesTo / clear / sync / reopen programs; at any
    step the file is copied and cut at a random length between the last size ``on_sync``
    reported and its current size, as power loss would, and the copy is reopened."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="kolk-journal-")
        self.path = os.path.join(self.dir, "journal.log")
        self.reports: list[tuple[str, int]] = []
        self.j = DurableJournal(self.path, on_sync=self._on_sync)
        self.model: list[tuple[bytes, int, int]] = []
        self.synced: list[tuple[bytes, int, int]] = []  # the entries as of the last report
        self.reported = 0
        self.term = 1
        self.next_index = 1

    def _on_sync(self, path: str, size: int) -> None:
        self.reports.append((path, size))

    def _after_durable_step(self, before: int) -> None:
        if len(self.reports) > before:
            path, size = self.reports[-1]
            assert path == self.path
            assert size == os.path.getsize(self.path) == offsets(self.model)[-1]
            self.synced = list(self.model)
            self.reported = size

    @rule(command=st.binary(max_size=40), bump=st.booleans())
    def add(self, command, bump):
        if bump:
            self.term += 1
        idx = self.model[-1][1] + 1 if self.model else self.next_index
        self.j.add(command, idx, self.term)
        self.model.append((command, idx, self.term))

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_from(self, data):
        k = data.draw(st.integers(0, len(self.model)))
        self.j.deleteEntriesFrom(k)
        if k == 0:
            self.next_index = self.model[0][1]
        del self.model[k:]

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete_to(self, data):
        k = data.draw(st.integers(0, len(self.model)))
        before = len(self.reports)
        if k == len(self.model):
            self.next_index = self.model[-1][1] + 1
        self.j.deleteEntriesTo(k)
        del self.model[:k]
        assert len(self.reports) == before + 1, "a rewrite must report its new size"
        self._after_durable_step(before)

    @rule()
    def clear(self):
        before = len(self.reports)
        if self.model:
            self.next_index = self.model[-1][1] + 1
        self.j.clear()
        self.model = []
        assert len(self.reports) == before + 1, "a rewrite must report its new size"
        self._after_durable_step(before)

    @rule()
    def sync(self):
        before = len(self.reports)
        dirty = self.j._dirty
        self.j.sync()
        assert len(self.reports) == before + (1 if dirty else 0)
        self._after_durable_step(before)

    @rule()
    def reopen(self):
        before = len(self.reports)
        self.j._destroy()
        self._after_durable_step(before)
        self.j = DurableJournal(self.path, on_sync=self._on_sync)
        assert entries_of(self.j) == self.model and self.j.torn_bytes == 0

    @rule(where=st.floats(0, 1), garbage=st.binary(max_size=30))
    def power_loss(self, where, garbage):
        current = os.path.getsize(self.path)
        assert current == offsets(self.model)[-1]
        low = min(self.reported, current)
        cut = low + int((current - low) * where)
        with open(self.path, "rb") as f:
            data = f.read(cut)
        copy_dir = tempfile.mkdtemp(dir=self.dir)
        copy = os.path.join(copy_dir, "journal.log")
        with open(copy, "wb") as f:
            f.write(data + garbage)
        try:
            reopened = DurableJournal(copy)
            got = entries_of(reopened)
            reopened._destroy()
        finally:
            shutil.rmtree(copy_dir)
        ends = offsets(self.model)[1:]
        whole = sum(1 for end in ends if end <= cut)
        # A prefix of the entries: every whole entry in the cut and nothing else ...
        assert got == self.model[:whole]
        # ... which holds every synced entry that is still in the journal.
        common = 0
        for a, b in zip(self.synced, self.model):
            if a != b:
                break
            common += 1
        assert len(got) >= common

    @invariant()
    def journal_matches_model(self):
        assert entries_of(self.j) == self.model

    def teardown(self):
        try:
            self.j._destroy()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def test_power_loss_keeps_every_synced_entry():
    """Property: whatever the sequence of adds, deletes, rewrites and syncs, cutting the file
    anywhere between the last size ``on_sync`` reported and its current size (with garbage
    after the cut) reopens to a prefix of the entries holding every entry that was synced."""
    run_state_machine_as_test(
        JournalPowerLoss,
        settings=settings(max_examples=60, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
