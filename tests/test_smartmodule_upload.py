"""Validation at upload (issue 18, DESIGN.md §8: modules are validated when they are stored).

Every module of the upload-refused corpus (tests/hostile_modules.py ``UPLOAD_REFUSED``) is
refused by a real SC both ways a client can store one: ``kolk smartmodule create`` (the CLI)
and a raw ``putObject`` of a hand-built spec with a correct sha256 (bypassing every check of
the CLI). Both give the message ``validate_module`` gives, and nothing is stored. A good
module is accepted both ways. The two modules that are slow to compile (``COMPILE_HEAVY``)
may be refused by the compile time limit or accepted, but while the SC checks one, it keeps
answering other requests within ``ANSWER_S_MAX``.

Each CLI run is a fresh Python that spends about a second importing before it checks anything,
so the CLI runs of the refused corpus and the good module are started together by the
``cli_creates`` fixture, ``CLI_RUNS_PARALLEL`` at a time, and each test waits for its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hostile_modules as hm  # noqa: E402
from dataplane_cluster import DataPlaneCluster, run_async  # noqa: E402
from kolk.client.admin import AdminClient  # noqa: E402
from kolk.protocol.errors import KolkError  # noqa: E402

CLI_TIMEOUT_S = 180.0   # a CLI create, compile-heavy modules included (the compile limit ends them sooner)
ANSWER_S_MAX = 1.0      # the SC answers list_objects within this while it checks an upload
UPLOAD_TIMEOUT_S = 180.0
# `create` of a compile-heavy module answers within this: the compile time limit is 10 s
# (docs/smartmodule-abi.md "Validation"), met at most twice (the CLI's own check, the SC's),
# plus room for process start-up on a loaded machine.
CLI_CREATE_S_MAX = 40.0
# CLI runs of `cli_creates` at a time: a run is mostly CPU (imports), and CI has 2 cores.
CLI_RUNS_PARALLEL = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: Any) -> Any:
    """One SC (no SPU: storing a module involves none), stopped by pid at the end."""
    c = DataPlaneCluster(str(tmp_path_factory.mktemp("upload")), spus=0)
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture(scope="module")
def cli_creates(cluster: DataPlaneCluster, tmp_path_factory: Any) -> Iterator[dict[str, "Future[Any]"]]:
    """``kolk smartmodule create`` of every module of ``UPLOAD_REFUSED`` (as ``cli-CASE@1``)
    and of the good one (``cli-good@1``), started in the order the tests run,
    ``CLI_RUNS_PARALLEL`` at a time; each test takes the result of its own. The labels are all
    different, so the runs cannot change each other's outcome. The pool waits for the runs
    still going when the module ends."""
    d = tmp_path_factory.mktemp("cli-wasm")
    modules = {f"cli-{case}@1": hm.UPLOAD_REFUSED[case]() for case in sorted(hm.UPLOAD_REFUSED)}
    modules["cli-good@1"] = hm.good_filter()
    with ThreadPoolExecutor(max_workers=CLI_RUNS_PARALLEL) as pool:
        runs = {}
        for label, wasm in modules.items():
            path = d / f"{label.replace('@', '-')}.wasm"
            path.write_bytes(wasm)
            runs[label] = pool.submit(kolk_create, cluster, label, str(path))
        yield runs


def validation_error(wasm: bytes) -> str:
    """The message ``validate_module`` refuses ``wasm`` with (it must refuse it)."""
    from kolk.smartmodule.limits import SmartModuleError
    from kolk.smartmodule.validate import validate_module

    with pytest.raises(SmartModuleError) as info:
        validate_module(wasm)
    assert info.value.reason == "invalidModule", (info.value.reason, str(info.value))
    return str(info.value)


def raw_spec(wasm: bytes) -> dict[str, Any]:
    """A spec as any client could send it: the bytes, their true sha256 and size, nothing else."""
    return {"wasm": base64.b64encode(wasm).decode(), "sha256": hashlib.sha256(wasm).hexdigest(), "size": len(wasm)}


def kolk_create(cluster: DataPlaneCluster, name: str, path: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kolk", "smartmodule", "create", name, "--wasm", path,
                           "--sc", ",".join(cluster.sc_addresses)],
                          capture_output=True, text=True, timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL)


async def stored_names(cluster: DataPlaneCluster) -> set[str]:
    admin = AdminClient(cluster.sc_addresses, timeout_s=10)
    try:
        return {o["name"] for o in await admin.list_objects("smartmodule")}
    finally:
        await admin.close()


async def put_raw(cluster: DataPlaneCluster, label: str, wasm: bytes) -> KolkError | None:
    admin = AdminClient(cluster.sc_addresses, timeout_s=UPLOAD_TIMEOUT_S)
    try:
        await admin.put_object("smartmodule", label, raw_spec(wasm), expected_version=-1)
        return None
    except KolkError as e:
        return e
    finally:
        await admin.close()


@pytest.mark.parametrize("case", sorted(hm.UPLOAD_REFUSED))
def test_refused_by_create_and_by_raw_put(cluster: DataPlaneCluster, cli_creates: dict[str, "Future[Any]"],
                                          case: str) -> None:
    """The module is refused by the CLI and by a raw putObject, each with the validator's
    message, and neither stores it."""
    wasm = hm.UPLOAD_REFUSED[case]()
    message = validation_error(wasm)

    cli = cli_creates[f"cli-{case}@1"].result()  # kolk_create of this module (started by the fixture)
    assert cli.returncode == 1, (cli.returncode, cli.stdout, cli.stderr)
    assert cli.stderr.startswith("kolk smartmodule create: ") and message in cli.stderr, (message, cli.stderr)
    assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr

    error = run_async(lambda: put_raw(cluster, f"raw-{case}@1", wasm))
    assert error is not None, f"a raw putObject stored {case}"
    assert error.code == "invalidArgument", (error.code, str(error))
    assert f"smartmodule raw-{case}@1: {message}" in str(error), (message, str(error))

    names = run_async(lambda: stored_names(cluster))
    assert f"cli-{case}@1" not in names and f"raw-{case}@1" not in names, names


def test_good_module_accepted_by_create_and_by_raw_put(cluster: DataPlaneCluster,
                                                       cli_creates: dict[str, "Future[Any]"]) -> None:
    """The identity filter is stored both ways, with the kind the SC found in it."""
    wasm = hm.good_filter()
    cli = cli_creates["cli-good@1"].result()  # kolk_create of the good module (started by the fixture)
    assert cli.returncode == 0, cli.stderr
    assert run_async(lambda: put_raw(cluster, "raw-good@1", wasm)) is None

    async def specs() -> dict[str, Any]:
        admin = AdminClient(cluster.sc_addresses, timeout_s=10)
        try:
            return {o["name"]: o["spec"] for o in await admin.list_objects("smartmodule")}
        finally:
            await admin.close()
    stored = run_async(specs)
    for label in ("cli-good@1", "raw-good@1"):
        assert stored[label]["sha256"] == hashlib.sha256(wasm).hexdigest()
        assert stored[label]["kind"] == "filter", stored[label]


async def _responsive_while(cluster: DataPlaneCluster, upload: "asyncio.Future[Any]") -> list[float]:
    """Ask the SC for a list of objects, one call after another, until ``upload`` is done;
    every answer's time."""
    admin = AdminClient(cluster.sc_addresses, timeout_s=10)
    times: list[float] = []
    try:
        while not upload.done():
            t0 = time.monotonic()
            await asyncio.wait_for(admin.list_objects("topic"), 10)
            times.append(time.monotonic() - t0)
            await asyncio.sleep(0.05)  # the asking period
    finally:
        await admin.close()
    return times


# `make test-long`: each case takes up to two compile time limits (20-30 s); in `make test`,
# test_smartmodule_attacks.py's compile-queue test keeps the SC answering during compiles.
@pytest.mark.long
@pytest.mark.parametrize("case", sorted(hm.COMPILE_HEAVY))
def test_compile_heavy_module_keeps_the_sc_responsive(cluster: DataPlaneCluster, case: str, tmp_path: Any) -> None:
    """A module that takes seconds to minutes to compile, stored raw and with the CLI: refused
    (by the compile time limit) or stored, both within the upload deadline; the SC answers
    every other request within ANSWER_S_MAX meanwhile; the CLI and the SC agree."""
    wasm = hm.COMPILE_HEAVY[case]()
    path = tmp_path / f"{case}.wasm"
    path.write_bytes(wasm)

    async def raw() -> tuple[KolkError | None, list[float], float]:
        t0 = time.monotonic()
        upload = asyncio.ensure_future(put_raw(cluster, f"raw-{case}@1", wasm))
        times = await _responsive_while(cluster, upload)
        return await upload, times, time.monotonic() - t0
    error, times, took = run_async(raw)
    slowest = max(times)
    print(f"\nupload {case} ({len(wasm)} bytes): {'refused: ' + str(error) if error else 'stored'} in {took:.1f} s; "
          f"{len(times)} list_objects meanwhile, slowest {slowest * 1000:.0f} ms")
    assert slowest <= ANSWER_S_MAX, f"the SC took {slowest:.2f} s to answer while it checked {case}"
    names = run_async(lambda: stored_names(cluster))
    if error is not None:
        assert error.code == "invalidArgument", (error.code, str(error))
        assert f"raw-{case}@1" not in names
    else:
        assert f"raw-{case}@1" in names

    t0 = time.monotonic()
    cli = kolk_create(cluster, f"cli-{case}@1", str(path))
    cli_s = time.monotonic() - t0
    print(f"cli create {case}: exit {cli.returncode} in {cli_s:.1f} s: {cli.stderr.strip()[:200]}")
    assert cli_s <= CLI_CREATE_S_MAX, f"kolk smartmodule create of {case} took {cli_s:.0f} s (the compile limit is 10 s)"
    # The CLI says what the SC decided for its own upload. That may differ from the raw
    # upload's outcome: a compile that takes about the limit is stored once and refused once on
    # a loaded machine.
    cli_names = run_async(lambda: stored_names(cluster))
    if cli.returncode == 0:
        assert f"cli-{case}@1" in cli_names, cli.stdout
    else:
        assert cli.returncode == 1, (cli.returncode, cli.stderr)
        assert f"cli-{case}@1" not in cli_names
        assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr
        assert "compile time limit" in cli.stderr or (error is not None and str(error).split(": ", 1)[1] in cli.stderr), \
            cli.stderr
