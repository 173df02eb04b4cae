"""Reading a file the user named on the command line: regular files only, at most a bounded
size, and never a hang. A directory, a FIFO, a device (``/dev/zero``) or a socket is refused
by what it is before it is opened for reading; a FIFO is opened non-blocking so that even a
swap between the check and the open cannot block. Errors are one line (:class:`FileProblem`).
"""

from __future__ import annotations

import errno
import os
import stat

__all__ = ["FileProblem", "read_regular_file"]


class FileProblem(ValueError):
    """A named file that cannot be read; ``str(e)`` is one line without the path,
    ``e.path`` is the path."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(problem)
        self.path, self.problem = path, problem


def _kind(mode: int) -> str | None:
    """What a file that is not a regular file is, in words; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return f"is {what}, not a regular file"
    return "is not a regular file"


def read_regular_file(path: str, limit: int, what: str = "file") -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them; FileProblem if it
    does not exist, is not a regular file, cannot be read or is larger."""
    try:
        kind = _kind(os.stat(path).st_mode)
    except FileNotFoundError:
        raise FileProblem(path, "no such file") from None
    except OSError as e:
        raise FileProblem(path, e.strerror or str(e)) from None
    if kind is not None:
        raise FileProblem(path, kind)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise FileProblem(path, "no such file" if e.errno == errno.ENOENT else (e.strerror or str(e))) from None
    try:
        kind = _kind(os.fstat(fd).st_mode)  # what was opened, should it have changed since the check
        if kind is not None:
            raise FileProblem(path, kind)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise FileProblem(path, e.strerror or str(e)) from None
    finally:
        os.close(fd)
    if size > limit:
        raise FileProblem(path, f"more than {limit:,} bytes, the largest {what}")
    return b"".join(chunks)
