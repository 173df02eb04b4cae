"""Node identity without TLS: the server's ``challenge`` and ``authenticate`` calls
(docs/security.md "Node identity without TLS"; the shared part is core/protocol/node_auth.py).

:class:`NodeAuthCalls` is mixed into the SC's and the SPU's per-connection handlers
(core/sc/api.py, core/spu/replication_api.py): a connection that proves the cluster secret
becomes that node's for the rest of its life.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import replace
from typing import Any

from ..protocol.node_auth import Challenge
from ..protocol.wire import set_error
from ..security.tls import Peer

log = logging.getLogger("kolk.identity")


class NodeAuthCalls(abc.ABC):
    """``challenge`` and ``authenticate`` of one connection, mixed into a server's handler,
    which has ``peer`` and says in :meth:`_node_auth` what it checks tokens against."""

    peer: Peer
    _challenge: Challenge | None = None  # made on the connection's first challenge

    @abc.abstractmethod
    def _node_auth(self) -> tuple[str, str | None, bool, Any]:
        """(service name, cluster secret or None, TLS on, the Authorizer): each server says
        what it checks tokens against (core/sc/api.py, core/spu/replication_api.py)."""

    def _tls_cluster(self, result: Any, tls: bool) -> bool:
        if tls:
            set_error(result, "invalidArgument", "this cluster runs with TLS: a node's identity is its node "
                                                 "certificate, authenticate is for clusters without TLS")
        return tls

    async def challenge(self, req: Any, out: Any) -> None:
        """This connection's nonce for ``authenticate`` (a fresh one each time)."""
        _service, _secret, tls, _authz = self._node_auth()
        if self._tls_cluster(out.result, tls):
            return
        if self._challenge is None:
            self._challenge = Challenge()
        out.nonce = self._challenge.issue()
        out.result.ok = True

    async def authenticate(self, req: Any, out: Any) -> None:
        """A node proves the cluster secret; the connection is the node's from now on. A
        refusal is logged and audited (core/node/authz.py) and leaves the connection as it was."""
        service, secret, tls, authz = self._node_auth()
        if self._tls_cluster(out.result, tls):
            return
        node = req.node
        why = (self._challenge or Challenge()).verify(secret, service, node, req.token)
        if why is not None:
            set_error(out.result, "denied", authz.refuse_authentication(self.peer, node, why))
            return
        self.peer = replace(self.peer, identity=node, node=True)
        log.debug("%s from %s proved the cluster secret", node, self.peer.address or "?")
        out.result.ok = True
