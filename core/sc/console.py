"""The SC's side of the web console (core/console, docs/console.md): what it hands the console.

The console never imports the SC. It gets from here: the SC's policy engine as a
:class:`~kolk.console.access.Gate` (the same decisions and the same audit log as the wire API's),
and an ordinary client connected to this SC's own admin address with this SC's own credentials
(its node certificate with TLS; the cluster secret without, which makes it a node there too),
through which it collects the cluster view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..client.client import AsyncClient
from ..console.access import Decide, Gate
from ..console.app import Console, start_console
from ..console.collector import client_collector
from ..node.authz import Denied
from ..protocol.node_auth import NodeCredential
from ..security.policy import decide
from ..security.tls import Peer

if TYPE_CHECKING:
    from .server import ScServer

CONSOLE_CALL_TIMEOUT_S = 5.0  # each call the console's client makes to collect a view


def console_gate(server: "ScServer") -> Gate:
    def decider() -> Decide:
        server.sync_policy()
        policy = server.authz.policy  # immutable: the decision below is safe in a worker thread
        return lambda identity, address, action, resource: decide(policy, identity, address, action,
                                                                   resource).allowed

    def check(identity: str, address: str, action: str, resource: str) -> str | None:
        try:
            server.authorize(Peer(identity, address, False, server.config.tls is not None), action, resource)
            return None
        except Denied as e:
            return f"{e} (web console)"

    return Gate(decider, check)


async def start_sc_console(server: "ScServer", address: str) -> Console:
    config = server.config
    credential = NodeCredential(f"sc-{config.node_id}", config.secret) if config.tls is None else None
    client = AsyncClient([server.admin_address], timeout_s=CONSOLE_CALL_TIMEOUT_S, tls=config.tls,
                         credential=credential)
    collector = client_collector(client)
    try:
        return await start_console(address, collector=collector, gate=console_gate(server), tls=config.tls,
                                   name=f"sc-{config.node_id} console")
    except BaseException:
        await client.close()
        raise
