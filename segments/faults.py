"""Fault injection for tests and the fault harness: fail one segment fsync on demand.

Nothing in a running server installs this unless told to: the SPU installs it from the
environment variable ``KOLK_TEST_FAIL_FSYNC_FILE`` so that the fault harness, which cannot
reach into another process, can make a replica's disk fail at a moment it chooses. A real
disk that fails an fsync gives ``EIO``; this gives the same error at the same place
(:func:`kolk.segments.segment.fdatasync_segment`, which every segment fdatasync of an open
log goes through: group-commit rounds and ``sync()``, the fsync of a segment sealed by a
roll, and the cut of a truncation; not the fsync of the recovered tail when a log is
opened), so the log's reaction is the one a real failure gets.

How it is triggered: while a path is installed, each segment fdatasync first removes the file
at that path; if there was one, that fsync fails. Creating the file arms one failure; the
fsync that consumes it removes it, so the harness can see that it fired. Removing the file
is the test, so two fsyncs running at once cannot both consume one arming.
"""

from __future__ import annotations

import errno
import os

# The installed trigger file, or None. Read as ``faults.fsync_fault_file`` at each fsync:
# when nothing is installed, that one None check is the whole cost.
fsync_fault_file: str | None = None


def install_fsync_fault_file(path: str | None) -> None:
    """Make every later segment fdatasync fail with EIO once per creation of ``path``;
    ``None`` uninstalls. For tests and the fault harness only."""
    global fsync_fault_file
    fsync_fault_file = path


def take_fsync_fault(path: str) -> None:
    """Raise ``OSError(EIO)`` if the trigger file at ``path`` exists, removing it."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    raise OSError(errno.EIO, f"{os.strerror(errno.EIO)} (injected: {path} existed)")
