"""Issue 22 as an operator meets it (review R2): steps of docs/operations.md "Growing and
shrinking" that the other tests do not take. One real SC and three real SPUs on loopback.

Draining two SPUs one after the other: the second drain starts while a move of the first drain
is still copying onto the second SPU. The planner leaves a moving partition out, so the plan
of the second drain cannot include it; once that move finishes, the second SPU holds the
partition again. ``kolk cluster spu drain ID --wait`` must then plan again and empty it, not
wait for its ``--timeout`` (an hour by default) with nothing in progress."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

from dataplane_cluster import DataPlaneCluster, run_async, wait_until  # noqa: E402

CLI_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # A long heartbeat timeout: an SPU frozen with SIGSTOP stays alive in the metadata, so a
    # move onto it waits for it (docs/rebalance.md: the move finishes once its copy is in sync).
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("operator")), spus=3, heartbeat_timeout_ms=120000)
    try:
        c.start()
        yield c
    finally:
        for s in c.spus.values():  # never leave a frozen SPU behind
            if s.alive:
                os.kill(s.pid, signal.SIGCONT)
        c.close()


def _kolk(c: DataPlaneCluster, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KOLK_TLS_", "KOLK_SC"))}
    env["KOLK_HOME"] = os.path.join(c.root, "home")
    return subprocess.Popen([sys.executable, "-m", "kolk", *args, "--sc", c.sc_addresses[0]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_drain_onto_which_another_drain_moves_still_empties_the_spu(cluster: DataPlaneCluster) -> None:
    async def setup() -> int:
        client = cluster.client()
        try:
            await client.admin.create_topic("twice", 1, 1)
            await wait_until(lambda: _leader(client), 30, "twice-0 to have a leader")
            return int((await _partition(client))["spec"]["replicas"][0])
        finally:
            await client.close()

    first = run_async(setup)
    others = [i for i in cluster.spus if i != first]
    # Freeze the other SPUs: the move off `first` cannot finish until they run again.
    for i in others:
        os.kill(cluster.spus[i].pid, signal.SIGSTOP)
    try:
        async def drain_first() -> int:
            client = cluster.client()
            try:
                await client.admin.drain_spu(first)
                plan = await client.admin.rebalance(execute=True)
                [move] = [m for m in plan["moves"] if m["partition"] == "twice-0"]
                return int(move["to"][0])
            finally:
                await client.close()

        second = run_async(drain_first)
        proc = _kolk(cluster, "cluster", "spu", "drain", str(second), "--wait", "--timeout", "30")
        out: list[str] = []
        waiting = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.append(line)
                if f"SPU {second} holds" in line:
                    waiting.set()
            waiting.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        assert waiting.wait(CLI_TIMEOUT_S), "the drain never showed its progress"
        assert proc.poll() is None, "".join(out) + proc.stderr.read()  # type: ignore[union-attr]
        # twice-0 is still moving onto `second`: the second drain's plan had to leave it out.
        assert any("twice-0" in line and "moving to" in line for line in out), "".join(out)
    finally:
        for i in others:
            os.kill(cluster.spus[i].pid, signal.SIGCONT)
    try:
        rc = proc.wait(CLI_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    assert rc == 0, "".join(out) + stderr
    assert f"SPU {second} holds 0 replicas" in out[-1], "".join(out)

    async def check() -> None:
        client = cluster.client()
        try:
            replicas = (await _partition(client))["spec"]["replicas"]
            assert first not in replicas and second not in replicas, replicas
        finally:
            await client.close()
    run_async(check)


async def _partition(client: Any) -> dict[str, Any]:
    return next(p for p in await client.admin.list_objects("partition") if p["name"] == "twice-0")


async def _leader(client: Any) -> bool:
    try:
        return (await _partition(client))["status"]["leader"] is not None
    except StopIteration:
        return False
