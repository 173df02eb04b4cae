"""The archive ``kolk cluster diagnostics`` writes: one gzip'd tar, private to its user (0600).

Members are added as they come (a node's answer can be 8 MiB; the whole cluster's is never
held at once), from worker threads, one at a time. The archive is written beside its final
name and renamed into place only when complete: an interrupted or refused collection leaves
no half archive under the name asked for, and nothing at all once :meth:`Archive.abort` ran.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading
import time
from datetime import datetime, timezone

from ..protocol.errors import KolkError

ARCHIVE_MODE = 0o600
ARCHIVE_PREFIX = "kolk-diagnostics-"
MEMBERS_MAX = 10_000  # members of one archive (a cluster of thousands of SPUs is not a local one)


def default_name(now: datetime) -> str:
    """``kolk-diagnostics-20261205T191500Z.tar.gz`` for ``now`` (UTC)."""
    return f"{ARCHIVE_PREFIX}{now.astimezone(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}.tar.gz"


def checked_out_path(path: str) -> str:
    """``path`` made absolute once its directory is known to exist; KolkError (one line) if not,
    or if ``path`` is itself a directory. Checked before anything is asked of the cluster."""
    if not path:
        raise KolkError("--out is empty; name the archive file to write")
    full = os.path.abspath(path)
    parent = os.path.dirname(full)
    if os.path.isdir(full):
        raise KolkError(f"--out {path} is a directory; name the archive file to write")
    try:
        mode = os.lstat(full).st_mode
    except FileNotFoundError:
        mode = None
    # The archive is renamed into place: that would replace a symlink (not what it points to)
    # or a device such as /dev/null (as root), so only a new name or a regular file is taken.
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a symlink" if stat.S_ISLNK(mode) else "not a regular file"
        raise KolkError(f"--out {path} is {kind}; name a new file or a regular file to replace")
    if not os.path.isdir(parent):
        raise KolkError(f"--out {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KolkError(f"--out {path}: the directory {parent} is not writable")
    return full


class Archive:
    """A tar.gz being written to ``path`` (through a temporary file beside it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._tmp = f"{path}.part-{os.getpid()}"
        # A new file, never one already there (nor a link someone put in its place).
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self._tmp, flags, ARCHIVE_MODE)
        except OSError as e:
            raise KolkError(f"--out {path}: cannot create {self._tmp}: {e.strerror or e}") from None
        os.fchmod(fd, ARCHIVE_MODE)  # O_CREAT's mode is cut by the umask, and a leftover keeps its own
        self._file = os.fdopen(fd, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w:gz")
        self._lock = threading.Lock()
        self.members: list[tuple[str, int]] = []  # (name, bytes), in the order written

    def add(self, name: str, data: bytes) -> None:
        """Add one member (called from worker threads; one at a time)."""
        with self._lock:
            if len(self.members) >= MEMBERS_MAX:
                raise KolkError(f"the archive already has {MEMBERS_MAX} members; {name} is left out")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = ARCHIVE_MODE
            info.mtime = int(time.time())
            self._tar.addfile(info, io.BytesIO(data))
            self.members.append((name, len(data)))

    def close(self) -> None:
        """Finish the archive and put it in place (fsynced first)."""
        with self._lock:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Throw the archive away: nothing is left behind."""
        with self._lock:
            try:
                self._tar.close()
            except (OSError, ValueError):
                pass  # the file is removed next whatever state the tar was in
            self._file.close()
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
