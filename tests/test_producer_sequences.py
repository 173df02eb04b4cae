"""The idempotent producer's numbering, against a stand-in for the client's network calls:
which producer id and sequence each batch carries, one id however many first sends race, and
a fresh id at sequence 0 after a batch of a partition failed for good."""

from __future__ import annotations

import asyncio
from typing import Any

from kolk.protocol.errors import KolkError
from kolk.client.producer import AsyncProducer
from kolk.segments.batch import parse_header


class Calls:
    """What AsyncProducer asks of AsyncClient: partitions, producer ids, produce."""

    def __init__(self, fail_first: int = 0) -> None:
        self.next_id = 100
        self.id_requests = 0
        self.sent: list[tuple[int, int, int]] = []  # (producer id, base sequence, records)
        self.fail_first = fail_first
        self.admin = self

    async def partitions(self, topic: str) -> list[dict[str, Any]]:
        return [{"spec": {"partition": 0}}]

    async def max_message_bytes(self, topic: str) -> int | None:
        return None  # the SPU's limit is unknown here: the producer's own batch size stands

    async def allocate_producer_ids(self, count: int) -> int:
        self.id_requests += 1
        await asyncio.sleep(0)  # the round trip to the SC: other sends run meanwhile
        self.next_id += 1
        return self.next_id - 1

    async def produce(self, topic: str, partition: int, data: bytes, *args: Any) -> int:
        h = parse_header(data)
        self.sent.append((h.producer_id, h.base_sequence, h.record_count))
        if len(self.sent) <= self.fail_first:
            raise KolkError("the leader refused it for good")
        return 1000 + len(self.sent)


def test_racing_first_sends_share_one_id() -> None:
    async def body() -> None:
        calls = Calls()
        p = AsyncProducer(calls, "t", linger_ms=0)  # type: ignore[arg-type]
        await asyncio.gather(*(p.send(b"v%d" % i) for i in range(20)))
        await p.flush()
        assert calls.id_requests == 1 and {pid for pid, _, _ in calls.sent} == {100}
        seqs = [(seq, n) for _, seq, n in calls.sent]
        assert [s for s, _ in seqs] == [sum(n for _, n in seqs[:i]) for i in range(len(seqs))]
    asyncio.run(body())


def test_a_batch_lost_for_good_gives_its_partition_a_fresh_id_at_zero() -> None:
    """Batch 1 fails for good: its sequences never reach the leader, so the producer waits
    for the partition's older batches, takes a new id and restarts at sequence 0."""
    async def body() -> None:
        calls = Calls(fail_first=1)
        p = AsyncProducer(calls, "t", linger_ms=0, retries=0)  # type: ignore[arg-type]
        first = await p.send(b"a")
        await p.flush()
        try:
            await first
            raise AssertionError("the first batch should have failed")
        except KolkError:
            pass
        later = [await p.send(b"b%d" % i) for i in range(3)]
        await p.flush()
        assert [(await f).offset >= 1000 for f in later] == [True] * 3
        assert calls.sent[0][:2] == (100, 0)
        assert calls.sent[1][:2] == (101, 0)  # a fresh id, from sequence 0
        assert {pid for pid, _, _ in calls.sent[1:]} == {101}
    asyncio.run(body())
