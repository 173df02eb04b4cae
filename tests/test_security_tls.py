"""TLS on every listener and connection, through real processes: SC admin, SPU data plane,
SPU to SC and SPU to SPU (replication) all run with mutual TLS; the right client succeeds, and
no certificate, another CA, an expired certificate and plaintext each fail with an error that
says so (and the server logs the refusal)."""

from __future__ import annotations

import asyncio
import datetime
import os
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, read_all, run_async
from kolk.client.admin import AdminClient
from kolk.protocol.channel import ConnectionLost
from kolk.client.client import AsyncClient
from kolk.protocol.errors import KolkError
from kolk.security.certs import create_ca, issue, write_pair
from kolk.security.tls import TlsConfig


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("tls")), spus=2, tls=True, clients=("admin", "alice"))
    try:
        c.start()
        yield c
    finally:
        c.close()


def bad_clients(c: DataPlaneCluster) -> dict[str, TlsConfig | None]:
    """The clients every listener must refuse, by what is wrong with them."""
    d = os.path.join(c.root, "bad")
    os.makedirs(d, exist_ok=True)
    ca = c.pki["admin"]["ca"]
    other_ca, other_key = create_ca("another CA")
    stranger = issue(other_ca, other_key, "stranger", kind="client")
    with open(ca, "rb") as f:
        ca_pem = f.read()
    with open(os.path.join(c.root, "pki", "ca.key"), "rb") as f:
        ca_key = f.read()
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    expired = issue(ca_pem, ca_key, "old-alice", kind="client", not_before=past,
                    not_after=past + datetime.timedelta(days=1))
    s_cert, s_key = write_pair(d, "stranger", *stranger)
    e_cert, e_key = write_pair(d, "expired", *expired)
    return {
        "no certificate": TlsConfig(ca),
        "another CA": TlsConfig(ca, s_cert, s_key),
        "expired certificate": TlsConfig(ca, e_cert, e_key),
        "plaintext": None,
    }


def test_the_right_client_works_over_tls_everywhere(cluster: DataPlaneCluster) -> None:
    """alice (a client certificate from the cluster's CA) creates a replicated topic, produces
    with acks=all (the follower fetches over SPU-to-SPU TLS) and reads everything back."""
    async def body() -> None:
        client = cluster.client(as_="alice")
        await client.create_topic("tls-t", 1, 2)
        producer = client.producer("tls-t")
        futs = [await producer.send(b"r-%d" % i) for i in range(200)]
        await producer.flush()
        assert [(await f).offset for f in futs] == list(range(200))
        records = await read_all(client, "tls-t")
        assert [r.value for r in records] == [b"r-%d" % i for i in range(200)]
        rows = await client.partition_list("tls-t")
        assert rows[0]["isr"] == [1, 2] or sorted(rows[0]["isr"]) == [1, 2]
    run_async(body)


@pytest.mark.parametrize("what", ["no certificate", "another CA", "expired certificate", "plaintext"])
def test_sc_and_spu_listeners_refuse(cluster: DataPlaneCluster, what: str) -> None:
    """Each bad client fails at the SC admin listener and at an SPU listener with an error
    naming the problem; the SC logs the refused handshake (except for plaintext, which it
    cannot tell from noise beyond 'not TLS')."""
    tls = bad_clients(cluster)[what]
    words = {"no certificate": "certificate", "another CA": "CA", "expired certificate": "expired",
             "plaintext": ""}[what]

    async def body() -> None:
        admin = AdminClient(cluster.sc_addresses, timeout_s=3, tls=tls)
        with pytest.raises(KolkError) as e:
            await admin.cluster_status()
        assert words.lower() in str(e.value).lower() or what == "plaintext", str(e.value)
        spu_client = AsyncClient(cluster.sc_addresses, timeout_s=3, tls=tls)
        with pytest.raises((KolkError, ConnectionLost)):
            spu = await spu_client._connect(cluster.spus[1].address)  # TLS refusals fail here
            await spu.call("offsets", 5, topic="tls-t", partition=0)  # plaintext: the SPU hangs up
    run_async(body)
    if what != "plaintext":
        text = "".join(open(n.log_path, errors="replace").read() for n in cluster.sc.nodes.values())
        assert "TLS handshake refused" in text


def test_plaintext_client_is_told_about_tls(cluster: DataPlaneCluster) -> None:
    """A plaintext client gets a connection error, never an answer: no request is served
    without TLS on a TLS listener."""
    async def body() -> None:
        admin = AdminClient(cluster.sc_addresses, timeout_s=3)
        with pytest.raises(KolkError):
            await admin.list_topics()
    run_async(body)
