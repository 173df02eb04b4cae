"""The local cluster's profile, read by the client for its defaults.

``kolk cluster start`` (``kolk.cli.local_cluster``) writes ``$KOLK_HOME/profile.json``
(default ``~/.kolk``): the SC address, the process ids and, with --tls, the admin client
certificate. A client given no SC address reads it here; the client never starts or stops
processes. A profile that says the cluster is stopped is an error for such a client
(:class:`LocalClusterStoppedError`), never a quiet fall back to 127.0.0.1:9003. The writers here (used by ``kolk cluster start``) keep what they write private:
files 0600, directories 0700 (docs/security.md "Files at rest").
"""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from ..protocol.errors import ClusterUnavailableError

PROFILE = "profile.json"


def kolk_home() -> str:
    return os.environ.get("KOLK_HOME") or os.path.join(os.path.expanduser("~"), ".kolk")


def profile_path() -> str:
    return os.path.join(kolk_home(), PROFILE)


PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: str) -> str:
    """``path`` as a directory only its user can enter (0700): created so whatever the umask,
    and tightened when it exists more open. The profile names the pids ``cluster stop`` kills
    and the admin key; the local cluster's data sits below it."""
    os.makedirs(path, mode=PRIVATE_DIR_MODE, exist_ok=True)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def write_private(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, as a 0600 file whatever the umask."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # O_CREAT's mode does not apply to a leftover .tmp
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            fd = -1
            f.write(text)
    finally:
        if fd >= 0:
            os.close(fd)
    os.replace(tmp, path)


def home_dir() -> str:
    """``$KOLK_HOME``, created 0700 when missing. One that exists may be a directory of the
    user's (``KOLK_HOME=$HOME``, even ``/tmp``), so its mode is changed only when others could
    replace the profile in it: writable by group or others, without the sticky bit (which
    keeps them from renaming our files). Then it becomes 0700."""
    path = kolk_home()
    if not os.path.isdir(path):
        return private_dir(path)
    mode = os.stat(path).st_mode
    if mode & 0o022 and not mode & stat.S_ISVTX:
        os.chmod(path, PRIVATE_DIR_MODE)
    return path


def write_profile(profile: dict[str, Any]) -> None:
    """Write the local cluster's profile: 0600 in ``$KOLK_HOME`` (:func:`home_dir`)."""
    home_dir()
    write_private(profile_path(), json.dumps(profile, indent=2))


def read_profile() -> dict[str, Any] | None:
    try:
        with open(profile_path(), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class LocalClusterStoppedError(ClusterUnavailableError):
    """No SC address was given and the local cluster's profile says it is stopped. Not
    retriable: falling back to 127.0.0.1:9003 could reach another cluster (someone else's),
    so the caller starts the local cluster or names an SC."""

    retriable = False

    def __init__(self, how_to_name_an_sc: str = "give the client an SC address (HOST:PORT)") -> None:
        super().__init__(f"the local cluster is stopped: run kolk cluster start, or {how_to_name_an_sc}")


def profile_sc() -> str | None:
    """The SC of the running local cluster; None when there is no profile (the caller's
    default applies). LocalClusterStoppedError when the profile says it is stopped."""
    p = read_profile()
    if p and not p.get("running"):
        raise LocalClusterStoppedError()
    return p.get("sc") if p else None


def profile_ca() -> str | None:
    """The CA file of the local cluster when it was started with --tls, running or not: the CA
    a client given only its own certificate and key trusts (docs/operations.md)."""
    p = read_profile()
    tls = p.get("tls") if p else None
    return tls.get("ca") if isinstance(tls, dict) else None


def profile_tls() -> Any:
    """The admin client certificate of a running local cluster started with --tls, else None."""
    from ..security.tls import TlsConfig

    p = read_profile()
    tls = p.get("tls") if p and p.get("running") else None
    return TlsConfig(tls["ca"], tls["cert"], tls["key"]) if tls else None
