"""Finding a consumer group's coordinator and calling it (the client side of protocol.md's
"Finding the coordinator"; docs/consumers.md).

A group's coordinator is the leader SPU of partition ``crc32c(group) % P`` of the internal
topic ``_consumer_offsets`` (``kolk.groups.names.group_partition``). :func:`group_call` looks
it up through the client's partition metadata, sends one group request and returns the checked
response struct. It retries, with a jittered backoff of 50-200 ms, until ``deadline_s``:

- while ``_consumer_offsets`` does not exist or has no leader yet (the client asks the SC to
  create it, with the SC's settings, the first time; Kafka's first FindCoordinator does the same),
- when the SPU answers ``notCoordinator`` or ``coordinatorLoading`` (leadership moved, or the new
  leader is still reading the group's offsets), or any other retriable error,
- when the connection fails or the SPU does not answer in time.

Before each retry it forgets the leaders of ``_consumer_offsets`` (and drops a broken
connection), so the next attempt asks the SC where the coordinator is now. Non-retriable answers
(``staleMember``, ``denied``, ``invalidArgument``, ``notFound`` of a group or a topic, ``inUse``)
are raised at once. At the deadline the last error is raised, its message saying how long the
client tried. A call is sent again only when safe: every group request is idempotent at the
coordinator (a heartbeat re-sent with the same member id, epoch and owned set; a commit of the
same offsets), which protocol.md relies on.

Example::

    from kolk.client.coordinator import group_call, list_groups

    r = await group_call(client, "billing", "offsetFetch", {"group": "billing", "topics": []},
                         deadline_s=10.0)
    committed = {(o.topic, o.partition): o.offset for o in r.offsets}

    r = await group_call(client, "billing", "describeGroup", {"group": "billing"}, deadline_s=10.0)
    info = json.loads(r.groupJson)

    groups = await list_groups(client, deadline_s=10.0)   # merged from every coordinator

``fields`` are the request's fields by their wire names (core/protocol/kolk.capnp); list fields
take Python lists (of dicts for structs: ``owned=[{"topic": "t", "partitions": [0, 1]}]``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from typing import TYPE_CHECKING, Any

from ..groups.names import OFFSETS_TOPIC, GroupNameError, check_group, group_partition
from ..protocol.channel import CallRejected, ConnectionLost
from ..protocol.errors import (AlreadyExistsError, ClusterUnavailableError, InvalidRequestError, KolkError,
                               NotFoundError)
from ..protocol.wire import error_from_struct, transport_error

if TYPE_CHECKING:
    from .client import AsyncClient

log = logging.getLogger("kolk.groups")

BACKOFF_MIN_S = 0.05  # protocol.md: back off 50-200 ms before looking the coordinator up again
BACKOFF_MAX_S = 0.2
GROUP_CALL_DEADLINE_S = 10.0  # the default deadline of one group call, retries included
# The calls that name a group and go to its coordinator.
GROUP_CALLS = ("groupHeartbeat", "offsetCommit", "offsetFetch", "describeGroup", "deleteGroup")
_TRANSPORT = (CallRejected, ConnectionLost, TimeoutError)


def backoff_s(attempt: int) -> float:
    """The pause before retry ``attempt`` (0-based): 50 ms doubling to 200 ms, jittered into
    [half, whole] so members of one group that lost the same coordinator do not retry in step."""
    top = min(BACKOFF_MAX_S, BACKOFF_MIN_S * (2 ** min(attempt, 8)))
    return max(BACKOFF_MIN_S, top * (0.5 + random.random() / 2))


async def offsets_partitions(client: "AsyncClient", create: bool = True) -> int:
    """How many partitions ``_consumer_offsets`` has. The SC creates the topic when a client first
    needs a coordinator (``create``: ask it to, as Kafka's first FindCoordinator does); meanwhile
    NotFoundError or ClusterUnavailableError, both retried by :func:`group_call`."""
    try:
        parts = await client.partitions(OFFSETS_TOPIC)
    except NotFoundError:
        if not create:
            raise
        try:
            await client.admin.create_topic(OFFSETS_TOPIC)  # the SC applies its own settings
        except AlreadyExistsError:
            pass
        client.forget_leaders(OFFSETS_TOPIC)
        raise ClusterUnavailableError(f"{OFFSETS_TOPIC} is being created for the first consumer group") from None
    if not parts:
        raise ClusterUnavailableError(f"{OFFSETS_TOPIC} has no partitions yet")
    return len(parts)


async def coordinator_of(client: "AsyncClient", group: str) -> tuple[Any, str]:
    """(connection, address) of ``group``'s coordinator, from the client's cached metadata."""
    p = group_partition(group, await offsets_partitions(client))
    return await client.leader_spu(OFFSETS_TOPIC, p)


async def group_call(client: "AsyncClient", group: str, method: str, fields: dict[str, Any], *,
                     deadline_s: float = GROUP_CALL_DEADLINE_S, attempt_timeout_s: float | None = None) -> Any:
    """Send ``method`` (one of :data:`GROUP_CALLS`) with ``fields`` to ``group``'s coordinator;
    the response struct once its ``result`` is ok. A bad group name: InvalidRequestError, before
    anything is sent. Retries as the module docstring says until
    ``deadline_s`` seconds from now. ``attempt_timeout_s``: how long one attempt may wait for
    its answer (default: what is left of the deadline); a heartbeat's long poll passes its
    wait plus a margin."""
    try:
        check_group(group)
    except GroupNameError as e:
        raise InvalidRequestError(str(e)) from None
    if method not in GROUP_CALLS:
        raise ValueError(f"{method} is not a group call ({', '.join(GROUP_CALLS)})")
    return await _retrying(client, lambda: coordinator_of(client, group), method, fields,
                           f"the coordinator of group {group}", deadline_s, attempt_timeout_s)


async def offsets_leader_call(client: "AsyncClient", partition: int, method: str, fields: dict[str, Any], *,
                              deadline_s: float = GROUP_CALL_DEADLINE_S) -> Any:
    """``method`` on the leader of ``_consumer_offsets-partition`` (listGroups asks each), with
    the retries of :func:`group_call`."""
    return await _retrying(client, lambda: client.leader_spu(OFFSETS_TOPIC, partition), method, fields,
                           f"the leader of {OFFSETS_TOPIC}-{partition}", deadline_s, None)


async def list_groups(client: "AsyncClient", *, deadline_s: float = GROUP_CALL_DEADLINE_S) -> list[dict[str, Any]]:
    """Every group of the cluster as the coordinators list them ({"group", "state", "members",
    "coordinator"}), sorted by name: each SPU leading a partition of ``_consumer_offsets`` is
    asked once (``listGroups`` answers the groups that SPU coordinates), all at once."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    try:
        await client.partitions(OFFSETS_TOPIC)
    except NotFoundError:
        return []  # no group was ever used: the SC creates the offsets topic for the first one
    except KolkError:
        pass  # retried below
    n = await _until(loop, end, lambda: offsets_partitions(client), f"{OFFSETS_TOPIC}")
    # One partition per distinct leader is enough: the SPU answers for every group it coordinates.
    by_leader: dict[Any, int] = {}
    for p, obj in enumerate(await client.partitions(OFFSETS_TOPIC)):
        by_leader.setdefault(obj.get("status", {}).get("leader"), p)
    if None in by_leader:  # an offline partition: ask its index anyway, the retries wait for a leader
        by_leader = {p: p for p in range(n)}
    answers = await asyncio.gather(*(offsets_leader_call(client, p, "listGroups", {}, deadline_s=max(0.1, end - loop.time()))
                                     for p in by_leader.values()))
    seen: dict[str, dict[str, Any]] = {}
    for r in answers:
        rows = json.loads(r.groupsJson or "[]")
        if not isinstance(rows, list):
            raise KolkError(f"listGroups answered {type(rows).__name__}, not a list")
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("group"), str):
                seen[row["group"]] = row
    return [seen[g] for g in sorted(seen)]


async def _until(loop: asyncio.AbstractEventLoop, end: float, lookup: Any, what: str) -> Any:
    """``await lookup()`` retried on retriable errors (NotFoundError too: the offsets topic does
    not exist yet) until ``end``."""
    attempt = 0
    while True:
        try:
            return await lookup()
        except KolkError as e:
            if not (e.retriable or isinstance(e, NotFoundError)) or loop.time() + BACKOFF_MIN_S >= end:
                raise
            await asyncio.sleep(min(backoff_s(attempt), max(0.0, end - loop.time())))
            attempt += 1


async def _retrying(client: "AsyncClient", locate: Any, method: str, fields: dict[str, Any], what: str,
                    deadline_s: float, attempt_timeout_s: float | None) -> Any:
    loop = asyncio.get_running_loop()
    started = loop.time()
    end = started + deadline_s
    attempt = 0
    # A commit (or delete) whose attempt timed out or lost its connection after sending may have
    # been applied; a later attempt's refusal (staleMember once the member was removed meanwhile)
    # does not undo that, so the error raised says the outcome is unknown (found by jepsen's
    # group workload: a frozen member's commit applied, then reported refused).
    write = method in ("offsetCommit", "deleteGroup")
    maybe_applied = False
    while True:
        address = None
        try:
            try:
                conn, address = await locate()
            except NotFoundError as e:  # the offsets topic is not there yet: the SC creates it
                raise ClusterUnavailableError(f"{what} is not known yet: {e}") from None
            left = max(0.01, end - loop.time())
            timeout = left if attempt_timeout_s is None else min(left, attempt_timeout_s)
            try:
                r = await conn.call(method, timeout, **fields)
            except _TRANSPORT as e:
                if not isinstance(e, CallRejected):
                    client.drop_connection(address)
                raise transport_error(e, address or what, write=write) from e
            if not r.result.ok:
                raise error_from_struct(r.result.error)
            return r
        except KolkError as e:
            if maybe_applied and not e.outcome_unknown:
                e.outcome_unknown = True
                e.args = (f"{e} (an earlier attempt may have been applied: the outcome is unknown)",)
            maybe_applied = maybe_applied or e.outcome_unknown
            if not e.retriable:
                raise
            client.forget_leaders(OFFSETS_TOPIC)
            pause = backoff_s(attempt)
            if loop.time() + pause >= end:
                e.args = (f"{e} (gave up on {what} after {loop.time() - started:.1f} s)",)
                raise
            log.debug("%s to %s: %s; retrying in %.0f ms", method, what, e, pause * 1000)
            await asyncio.sleep(pause)  # backoff before looking the coordinator up again
            attempt += 1
