"""The cluster secret, read the same way by ``kolk sc`` and ``kolk spu`` (docs/security.md).

The SCs use it for Raft; on a plaintext cluster every node proves it holds it before a
node-only call (core/node/identity.py). It comes from ``--secret-file`` or, without one, from
``$KOLK_CLUSTER_SECRET``. A file must be this user's alone: one readable or writable by the
group or by others is refused, as is a missing or unreadable file or a secret shorter than
SECRET_CHARS_MIN. Every refusal is one line naming the file and what is wrong.
"""

from __future__ import annotations

import os
import stat

SECRET_ENV = "KOLK_CLUSTER_SECRET"
SECRET_CHARS_MIN = 16
SECRET_FILE_BYTES_MAX = 4096  # a secret is a line, not a file's worth
_OTHERS = stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH


class SecretError(ValueError):
    """Why the cluster secret cannot be used (one line)."""


def read_secret_file(path: str) -> str:
    """The secret in ``path`` (surrounding whitespace stripped); SecretError saying why not."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise SecretError(f"secret file {path}: {(e.strerror or str(e)).lower()}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretError(f"secret file {path} is not a regular file")
        if st.st_mode & _OTHERS:
            raise SecretError(f"secret file {path} has mode {stat.S_IMODE(st.st_mode):04o}: it must not be readable "
                              f"or writable by group or others (chmod 600 {path})")
        data = os.read(fd, SECRET_FILE_BYTES_MAX + 1)
    except OSError as e:
        raise SecretError(f"secret file {path}: {(e.strerror or str(e)).lower()}") from None
    finally:
        os.close(fd)
    if len(data) > SECRET_FILE_BYTES_MAX:
        raise SecretError(f"secret file {path} is longer than {SECRET_FILE_BYTES_MAX} bytes; a secret is one line")
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise SecretError(f"secret file {path} is not UTF-8 text") from None
    return check_secret(secret, f"secret file {path}")


def check_secret(secret: str, where: str) -> str:
    if len(secret) < SECRET_CHARS_MIN:
        raise SecretError(f"{where} holds {len(secret)} characters; a cluster secret needs at least "
                          f"{SECRET_CHARS_MIN}")
    return secret


def cluster_secret(path: str | None, environ: "os._Environ[str] | dict[str, str] | None" = None) -> str | None:
    """The secret from ``path`` if given, else from $KOLK_CLUSTER_SECRET, else None."""
    if path:
        return read_secret_file(path)
    value = (environ if environ is not None else os.environ).get(SECRET_ENV, "").strip()
    if not value:
        return None
    return check_secret(value, f"${SECRET_ENV}")


def write_secret_file(path: str, secret: str) -> None:
    """Write ``secret`` to a new file of mode 0600 whatever the umask (kolk cluster start, tests)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secret.encode("utf-8") + b"\n")
    finally:
        os.close(fd)
