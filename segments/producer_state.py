"""Idempotent-producer state of one partition: which batches each producer already wrote.

The semantics of Kafka's idempotent producer (KIP-98; lost state tolerated as after KIP-360),
in our own words:

* An idempotent producer has an id (int64 >= 0) and an epoch (int16 >= 0), and numbers its
  records per partition: a batch of ``record_count`` records carries ``base_sequence`` and
  covers ``base_sequence .. base_sequence + record_count - 1``, wrapping from 2**31 - 1 to 0.
* The partition remembers, per producer id, its epoch and the last :data:`BATCHES_KEPT`
  batches it appended, with their offsets. A resend of one of those batches (same epoch,
  same first and last sequence) is a *duplicate*: it is not written again and the producer
  is told the offsets of the original. A batch must otherwise continue exactly where the
  last one ended; a gap is refused (:class:`OutOfOrderSequenceError`), and so is a resend
  too old for its offsets to be remembered (:class:`DuplicateSequenceError`).
* A higher epoch is a new instance of the same producer: it restarts at sequence 0 and fences
  every older epoch (:class:`ProducerFencedError`), so a zombie cannot write.
* A producer id the table does not know must start at sequence 0 (as in Kafka): a first batch
  at any other sequence may have overtaken the real first one, which is still being retried,
  and accepting it would put them out of order (OutOfOrderSequenceError, retriable). The
  price, as in Kafka before KIP-360: a producer whose state was lost (its batches all removed
  by retention, or evicted from the table) must be recreated.
* Producer id -1 means "not idempotent": such batches are always appended, nothing is tracked.

"Older" and "ahead" are decided with serial-number arithmetic (RFC 1982) on the 2**31 circle:
a sequence less than 2**30 after the expected one is a gap, anything else is a resend.

The table is pure (no I/O): ``check`` decides without changing anything, ``record`` notes an
append, and ``rebuild`` recomputes the table from the log's batch headers (after truncation,
on load, on failover) -- there is no truncate.
"""

from __future__ import annotations

from typing import Any, Iterable, NamedTuple

from .batch import NO_PRODUCER_ID, BatchHeader

SEQUENCE_MODULUS = 2**31  # sequences are int32 >= 0; 2**31 - 1 is followed by 0
EPOCH_MAX = 2**15 - 1
BATCHES_KEPT = 5
PRODUCERS_MAX_DEFAULT = 100_000
SNAPSHOT_VERSION = 1

APPEND = "append"
DUPLICATE = "duplicate"
NOT_IDEMPOTENT = "not_idempotent"


class ProducerStateError(Exception):
    """Root of the errors :meth:`ProducerStateTable.check` raises; the batch is not appended."""

    def __init__(self, message: str, producer_id: int) -> None:
        super().__init__(message)
        self.producer_id = producer_id


class ProducerFencedError(ProducerStateError):
    """The epoch is older than the producer's latest: a zombie (INVALID_PRODUCER_EPOCH)."""


class OutOfOrderSequenceError(ProducerStateError):
    """A gap after the last batch, or a new epoch not at 0 (OUT_OF_ORDER_SEQUENCE_NUMBER)."""


class DuplicateSequenceError(ProducerStateError):
    """Written before, too long ago for its offsets to be kept (DUPLICATE_SEQUENCE_NUMBER)."""


class InvalidSequenceError(ProducerStateError):
    """The idempotence fields are malformed: negative epoch or sequence, or no records."""


class Verdict(NamedTuple):
    """What :meth:`ProducerStateTable.check` says about a batch. For ``duplicate``, the
    offsets are those of the original; otherwise they are -1."""

    kind: str  # APPEND, DUPLICATE or NOT_IDEMPOTENT
    base_offset: int = -1
    last_offset: int = -1


class KeptBatch(NamedTuple):
    first_seq: int
    last_seq: int
    base_offset: int
    last_offset: int


class ProducerEntry(NamedTuple):
    """A read-only view of one producer's state; ``batches`` is oldest first."""

    producer_id: int
    epoch: int
    batches: tuple[KeptBatch, ...]
    last_append: int


def last_sequence(base_sequence: int, record_count: int) -> int:
    """The sequence of the last record of a batch, wrapping at 2**31."""
    return (base_sequence + record_count - 1) % SEQUENCE_MODULUS


def _validate(producer_id: int, producer_epoch: int, base_sequence: int,
              record_count: int) -> None:
    """Raise :class:`InvalidSequenceError` unless the fields of an idempotent batch are sane."""
    problem = None
    if producer_id < 0:
        problem = f"producer id {producer_id} is negative ({NO_PRODUCER_ID} means not idempotent)"
    elif not 0 <= producer_epoch <= EPOCH_MAX:
        problem = f"epoch {producer_epoch} is outside [0, {EPOCH_MAX}]"
    elif not 0 <= base_sequence < SEQUENCE_MODULUS:
        problem = f"base sequence {base_sequence} is outside [0, {SEQUENCE_MODULUS - 1}]"
    elif not 1 <= record_count < SEQUENCE_MODULUS:
        problem = f"record count {record_count} is outside [1, {SEQUENCE_MODULUS - 1}]"
    if problem:
        raise InvalidSequenceError(f"producer {producer_id}: {problem}", producer_id)


class _Entry:
    __slots__ = ("epoch", "batches", "last_append")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches: list[KeptBatch] = []  # never empty once recorded; oldest first
        self.last_append = 0


def sequence_count(h: BatchHeader) -> int:
    """How many sequence numbers a batch covers: its offsets, ``last_offset_delta + 1``, as in
    Kafka. Usually its record count; a SmartModule on the produce path may drop records but
    keeps the batch's offset range, so its sequence range stays the producer's."""
    return h.last_offset_delta + 1


class ProducerStateTable:
    """Per producer id: the epoch and the last :data:`BATCHES_KEPT` batches appended.

    At most ``producers_max`` producer ids are kept. Recording a batch of a new producer when
    the table is full evicts the producer whose last append is the oldest. "Oldest" is
    measured by an append counter that grows by one per :meth:`record`, never by a clock, so
    a rebuild from the same headers evicts the same producers. An evicted producer is simply
    unknown again: :meth:`check` accepts it only at sequence 0 (see the module docstring).
    """

    def __init__(self, producers_max: int = PRODUCERS_MAX_DEFAULT) -> None:
        if producers_max < 1:
            raise ValueError(f"producers_max must be at least 1, got {producers_max}")
        self.producers_max = producers_max
        # Kept in order of last append, oldest first: eviction pops the first key.
        self._entries: dict[int, _Entry] = {}
        self._appends = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, producer_id: object) -> bool:
        return producer_id in self._entries

    def get(self, producer_id: int) -> ProducerEntry | None:
        e = self._entries.get(producer_id)
        if e is None:
            return None
        return ProducerEntry(producer_id, e.epoch, tuple(e.batches), e.last_append)

    def check(self, producer_id: int, producer_epoch: int, base_sequence: int,
              record_count: int) -> Verdict:
        """Decide whether a batch may be appended; does not change the table.

        Returns a :class:`Verdict` (append, duplicate with the original's offsets, or not
        idempotent) or raises a :class:`ProducerStateError` subclass; the rules are in the
        module docstring.
        """
        if producer_id == NO_PRODUCER_ID:
            return Verdict(NOT_IDEMPOTENT)
        _validate(producer_id, producer_epoch, base_sequence, record_count)
        entry = self._entries.get(producer_id)
        who = f"producer {producer_id} epoch {producer_epoch}"
        if entry is None:
            if base_sequence == 0:
                return Verdict(APPEND)
            raise OutOfOrderSequenceError(
                f"{who} is unknown to this partition, so its first batch must start at expected "
                f"sequence 0, got {base_sequence} (an earlier batch is still in flight, or this "
                "producer's state was removed with old segments: recreate the producer)",
                producer_id,
            )
        if producer_epoch < entry.epoch:
            raise ProducerFencedError(
                f"{who} is older than epoch {entry.epoch}, which a newer instance of this "
                "producer already used: this instance is fenced and must stop",
                producer_id,
            )
        if producer_epoch > entry.epoch:
            if base_sequence != 0:
                raise OutOfOrderSequenceError(
                    f"{who} is a new epoch (the latest was {entry.epoch}) and must start at "
                    f"expected sequence 0, got {base_sequence}",
                    producer_id,
                )
            return Verdict(APPEND)
        last_seq = last_sequence(base_sequence, record_count)
        for b in entry.batches:
            if b.first_seq == base_sequence and b.last_seq == last_seq:
                return Verdict(DUPLICATE, b.base_offset, b.last_offset)
        expected = (entry.batches[-1].last_seq + 1) % SEQUENCE_MODULUS
        if base_sequence == expected:
            return Verdict(APPEND)
        if (base_sequence - expected) % SEQUENCE_MODULUS < SEQUENCE_MODULUS // 2:
            raise OutOfOrderSequenceError(
                f"{who}: expected sequence {expected}, got {base_sequence} (a gap: sequences "
                f"{expected}..{(base_sequence - 1) % SEQUENCE_MODULUS} were never written)",
                producer_id,
            )
        raise DuplicateSequenceError(
            f"{who}: sequences {base_sequence}..{last_seq} were written before (expected "
            f"sequence {expected} next) but are not one of the last {BATCHES_KEPT} batches "
            "whose offsets are kept",
            producer_id,
        )

    def record(self, producer_id: int, producer_epoch: int, base_sequence: int,
               record_count: int, base_offset: int, last_offset: int) -> None:
        """Note that a batch was appended at ``[base_offset, last_offset]``.

        Call it after :meth:`check` said "append". The log is the truth: a batch whose epoch
        differs from the kept one replaces the epoch and forgets the kept batches (as Kafka
        does for replicated batches). Producer id -1 is ignored; other malformed fields raise
        :class:`InvalidSequenceError`.
        """
        if producer_id == NO_PRODUCER_ID:
            return
        _validate(producer_id, producer_epoch, base_sequence, record_count)
        entry = self._entries.pop(producer_id, None)
        if entry is None:
            while len(self._entries) >= self.producers_max:
                del self._entries[next(iter(self._entries))]
            entry = _Entry(producer_epoch)
        elif producer_epoch != entry.epoch:
            entry.epoch = producer_epoch
            entry.batches.clear()
        last_seq = last_sequence(base_sequence, record_count)
        entry.batches.append(KeptBatch(base_sequence, last_seq, base_offset, last_offset))
        del entry.batches[:-BATCHES_KEPT]
        self._appends += 1
        entry.last_append = self._appends
        self._entries[producer_id] = entry

    def record_header(self, h: BatchHeader) -> None:
        """:meth:`record` from the header of a written batch.

        Skips batches that carry no producer state: producer id < 0, control batches, and
        headers whose idempotence fields are malformed (written before they were checked).
        """
        if h.producer_id < 0 or h.is_control:
            return
        count = sequence_count(h)
        try:
            _validate(h.producer_id, h.producer_epoch, h.base_sequence, count)
        except InvalidSequenceError:
            return
        self.record(h.producer_id, h.producer_epoch, h.base_sequence, count, h.base_offset, h.last_offset)

    @classmethod
    def rebuild(cls, headers: Iterable[BatchHeader],
                producers_max: int = PRODUCERS_MAX_DEFAULT) -> ProducerStateTable:
        """The table after recording ``headers``, the log's batches in offset order."""
        table = cls(producers_max)
        for h in headers:
            table.record_header(h)
        return table

    def snapshot(self) -> dict[str, Any]:
        """The state as a JSON-able dict; producers least recently appended first.

        Append counters are not stored, only their order, which is all eviction needs.
        """
        return {
            "version": SNAPSHOT_VERSION,
            "producers": [
                {"producer_id": pid, "epoch": e.epoch, "batches": [list(b) for b in e.batches]}
                for pid, e in self._entries.items()
            ],
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any],
                      producers_max: int = PRODUCERS_MAX_DEFAULT) -> ProducerStateTable:
        """The table :meth:`snapshot` described; ValueError if it is malformed. With a smaller
        ``producers_max``, the least recently appended producers are dropped."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"producer-state snapshot version {data.get('version')!r} "
                             f"is not {SNAPSHOT_VERSION}")
        table = cls(producers_max)
        for p in data["producers"]:
            pid, epoch, batches = int(p["producer_id"]), int(p["epoch"]), p["batches"]
            if pid < 0 or not 1 <= len(batches) <= BATCHES_KEPT:
                raise ValueError(f"producer {pid} with {len(batches)} batches in a snapshot")
            for first, last, base_offset, last_offset in batches:
                count = (int(last) - int(first)) % SEQUENCE_MODULUS + 1
                try:
                    table.record(pid, epoch, int(first), count, int(base_offset), int(last_offset))
                except InvalidSequenceError as exc:
                    raise ValueError(f"malformed producer-state snapshot: {exc}") from None
        return table
