"""Collecting a :class:`~kolk.client.cluster_view.ClusterView`: the calls (core/client/cluster_view.py
holds the values and the pure builders; docs/operations.md, "kolk top").

One view asks, over the public API only: the SC's ``clusterStatus`` (first: when no SC answers,
:func:`collect_view` raises its ClusterUnavailableError); then, at the same time, the topic,
SmartModule and policy objects, ``partition_list`` (the SC's metadata joined with every SPU's
``partitionStatus``), the consumer groups (listed, then described at most
GROUP_DESCRIBES_IN_FLIGHT at a time) and the newest records of ``_audit`` for recent denials.
Every part runs within PART_TIMEOUT_S; a part that fails or is denied by the policy leaves its
values empty and one line in ``errors``: a view is never refused for a part. Decoding audit
records and building the views from thousands of partitions runs in a worker thread, so a node
collecting a view for its console never holds its event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from ..protocol.errors import ClusterUnavailableError, CorruptDataError, KolkError
from ..segments import decode_records
from ..segments.errors import StorageError
from ..segments.batch import iter_batches
from . import cluster_view as cv

if TYPE_CHECKING:
    from .client import AsyncClient

T = TypeVar("T")
PART_TIMEOUT_S = 10.0  # the most one part of a view (partitions, groups, denials, ...) is waited for
GROUP_DESCRIBES_IN_FLIGHT = 16  # groups described at the same time
GROUP_DESCRIBE_DEADLINE_S = 5.0  # one group's describe, retries included
GROUPS_MARGIN_S = 1.0  # groups still being described this long before the part's end are given up
AUDIT_SCAN_RECORDS = 2_000  # newest _audit records read per partition for denials
AUDIT_SCAN_BYTES_MAX = 4 << 20  # and at most this many bytes per partition
AUDIT_FETCH_BYTES = 1 << 20  # one fetch of _audit
BATCH_BYTES_MAX = 64 << 20


def _line(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text


async def _part(what: str, errors: list[str], fn: Callable[[], Awaitable[T]], empty: T) -> T:
    """``fn()`` within PART_TIMEOUT_S, or ``empty`` with one line in ``errors``."""
    try:
        async with asyncio.timeout(PART_TIMEOUT_S):
            return await fn()
    except TimeoutError:
        errors.append(f"{what}: no answer within {PART_TIMEOUT_S:g} s")
    except KolkError as e:
        errors.append(f"{what}: {_line(e)}")
    return empty


async def _groups(client: "AsyncClient", errors: list[str]) -> tuple[cv.GroupView, ...]:
    """Every group, listed then described GROUP_DESCRIBES_IN_FLIGHT at a time. Groups not
    described when the part's time is nearly up keep what the list said, with the reason."""
    loop = asyncio.get_running_loop()
    budget_end = loop.time() + PART_TIMEOUT_S - GROUPS_MARGIN_S
    listed = await client.group_list()
    if len(listed) > cv.GROUPS_MAX:
        errors.append(f"groups: {len(listed) - cv.GROUPS_MAX} of {len(listed)} not described "
                      f"(at most {cv.GROUPS_MAX} per view)")
        listed = listed[:cv.GROUPS_MAX]
    gate = asyncio.Semaphore(GROUP_DESCRIBES_IN_FLIGHT)
    from . import groups_admin

    async def one(row: dict[str, Any]) -> cv.GroupView:
        async with gate:
            try:
                d = await groups_admin.describe_group(client, str(row.get("group")),
                                                      deadline_s=GROUP_DESCRIBE_DEADLINE_S)
            except KolkError as e:
                return cv.group_view(row, None, _line(e))
            return cv.group_view(row, d, None)
    tasks = [asyncio.ensure_future(one(r)) for r in listed]
    if tasks:
        await asyncio.wait(tasks, timeout=max(budget_end - loop.time(), 0.0))
    late = [t for t in tasks if not t.done()]
    for t in late:
        t.cancel()
    await asyncio.gather(*late, return_exceptions=True)
    if late:
        errors.append(f"groups: {len(late)} of {len(listed)} not described within {PART_TIMEOUT_S:g} s")
    return tuple(t.result() if not t.cancelled() else
                 cv.group_view(row, None, f"not described within {PART_TIMEOUT_S:g} s")
                 for t, row in zip(tasks, listed))


def _denials_of(chunks: list[tuple[bytes, int]]) -> list[cv.DenialView]:
    """The denials in fetched ``_audit`` data (each chunk: its bytes and the first offset wanted)."""
    out: list[cv.DenialView] = []
    for data, start in chunks:
        for pos, h in iter_batches(data, BATCH_BYTES_MAX, shared_offsets=True):
            if h.next_offset <= start or h.is_control:
                continue
            for offset, _ts, _key, value, _headers in decode_records(data, pos):
                if offset >= start:
                    d = cv.parse_denial(value)
                    if d is not None:
                        out.append(d)
    return out


async def _denials(client: "AsyncClient", parts: list[cv.PartitionView]) -> tuple[cv.DenialView, ...]:
    """The newest denials in the last AUDIT_SCAN_RECORDS records of each ``_audit`` partition."""
    chunks: list[tuple[bytes, int]] = []
    for p in parts:
        if p.topic != cv.AUDIT_TOPIC or p.high_watermark is None or p.log_start_offset is None:
            continue
        offset = max(p.log_start_offset, p.high_watermark - AUDIT_SCAN_RECORDS)
        read = 0
        while offset < p.high_watermark and read < AUDIT_SCAN_BYTES_MAX:
            r = await client.fetch(cv.AUDIT_TOPIC, p.partition, offset, AUDIT_FETCH_BYTES)
            data = bytes(r.records)
            if not data or r.nextOffset <= offset:
                break
            chunks.append((data, offset))
            read += len(data)
            offset = r.nextOffset
    try:
        return cv.newest_denials(await asyncio.to_thread(_denials_of, chunks))
    except (StorageError, ValueError) as e:  # batches the leader sent that do not decode
        raise CorruptDataError(f"{cv.AUDIT_TOPIC} holds a batch that cannot be read: {_line(e)}") from None


async def collect_view(client: "AsyncClient", previous: cv.ClusterView | None = None, *,
                       groups: bool = True, denials: bool = True) -> cv.ClusterView:
    """One view of the cluster, with topic rates against ``previous`` (see :func:`with_rates`).
    ClusterUnavailableError when no SC answers; any other part that fails is a line in
    ``errors``."""
    errors: list[str] = []
    taken = time.time_ns() // 1_000_000
    try:
        status = await client.cluster_status()
    except ClusterUnavailableError:
        raise
    except KolkError as e:  # e.g. the policy does not let this identity describe the cluster
        errors.append(f"cluster status: {_line(e)}")
        # The SPUs (every client may list them: their addresses are what clients need) still say
        # which are alive, so partitions are not all shown offline for want of the status.
        status = {"spus": await _part("spus", errors, lambda: _spus_listed(client), [])}
    alive = {int(u["id"]) for u in status.get("spus", ()) if u.get("alive")}

    async def topics_partitions_denials() -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                   tuple[cv.DenialView, ...]]:
        objs: list[dict[str, Any]] | None = await _part("topics", errors, client.list_topics, None)
        # Only the partitions of the topics this identity may see: nothing else is asked of the SPUs.
        names = None if objs is None else {str(o.get("name")) for o in objs}
        rows = await _part("partitions", errors,
                           lambda: client.partition_list(limit=cv.PARTITIONS_MAX, topics=names), [])
        found: tuple[cv.DenialView, ...] = ()
        if denials and (names is None or cv.AUDIT_TOPIC in names):
            audit = [cv.partition_view(r, alive) for r in rows if r.get("topic") == cv.AUDIT_TOPIC]
            found = await _part("recent denials", errors, lambda: _denials(client, audit), ())
        return objs or [], rows, found

    (topics_objs, rows, found), modules, policy_obj, group_views = await asyncio.gather(
        topics_partitions_denials(),
        _part("smartmodules", errors, lambda: client.admin.list_objects("smartmodule"), []),
        _part("policy", errors, lambda: _policy(client), cv.EMPTY_POLICY),
        _part("groups", errors, lambda: _groups(client, errors), ()) if groups else _none(),
    )

    def build() -> cv.ClusterView:
        parts = tuple(cv.partition_view(r, alive) for r in rows)
        total = sum(cv.whole((o.get("spec") or {}).get("partitions")) or 0 for o in topics_objs)
        if total > cv.PARTITIONS_MAX:
            errors.append(f"partitions: {total - cv.PARTITIONS_MAX} of {total} not described "
                          f"(at most {cv.PARTITIONS_MAX} per view)")
        topics = cv.topic_views(topics_objs, parts, errors)
        scs, leader = cv.sc_views(status)
        spus = cv.spu_views(status, parts)
        racks = tuple(sorted({s.rack for s in spus if s.rack}))
        version = status.get("metadata_version")
        answered = status.get("self")
        return cv.ClusterView(taken, scs, leader, spus, racks, topics, parts, group_views or (),
                              cv.module_views(modules), policy_obj, found, tuple(errors),
                              version if isinstance(version, int) else None,
                              answered if isinstance(answered, int) else None)

    view = await asyncio.to_thread(build)
    return cv.with_rates(view, previous)


async def _spus_listed(client: "AsyncClient") -> list[dict[str, Any]]:
    """The SPUs as clusterStatus lists them, from the SPU objects."""
    out = []
    for o in await client.admin.list_objects("spu"):
        spec, status = o.get("spec") or {}, o.get("status") or {}
        if cv.whole(spec.get("id")) is not None:
            out.append({"id": spec["id"], "rack": spec.get("rack"), "public_address": spec.get("public_address", ""),
                        "alive": bool(status.get("alive"))})
    return out


async def _none() -> tuple[cv.GroupView, ...]:
    return ()


async def _policy(client: "AsyncClient") -> cv.PolicyView:
    return cv.policy_view(await client.admin.get_object("policy", "active"))
