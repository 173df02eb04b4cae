"""The local cluster's profile, read by the client for its defaults.

``kolk cluster start`` (``kolk.cli.local_cluster``) writes ``$KOLK_HOME/profile.json``
(default ``~/.kolk``): the SC address, the process ids and, with --tls, the admin client
certificate. A client given no SC address reads it here; the client never starts or stops
processes.
"""

from __future__ import annotations

import json
import os
from typing import Any

PROFILE = "profile.json"


def kolk_home() -> str:
    return os.environ.get("KOLK_HOME") or os.path.join(os.path.expanduser("~"), ".kolk")


def profile_path() -> str:
    return os.path.join(kolk_home(), PROFILE)


def read_profile() -> dict[str, Any] | None:
    try:
        with open(profile_path(), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def profile_sc() -> str | None:
    p = read_profile()
    return p.get("sc") if p and p.get("running") else None


def profile_tls() -> Any:
    """The admin client certificate of a running local cluster started with --tls, else None."""
    from ..security.tls import TlsConfig

    p = read_profile()
    tls = p.get("tls") if p and p.get("running") else None
    return TlsConfig(tls["ca"], tls["cert"], tls["key"]) if tls else None
