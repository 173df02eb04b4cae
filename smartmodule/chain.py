"""A chain of SmartModule instances applied to record batches, whole batch by whole batch.

Each module's output feeds the next. The batches that come out keep the input batch's base
offset, last offset delta and timestamps, so every output record keeps the offset of the input
record it came from (docs/smartmodule-abi.md). A batch whose records all go is dropped; control
batches pass through untouched. Errors name the module, its kind and the input record's
offset, when the module said which record failed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

from ..segments.batch import CODEC_NONE, HEADER_SIZE, BatchHeader, check_header, iter_batches, parse_header
from ..segments.errors import InvalidBatchError
from ..segments.records import decompress, encode_batch
from .abi import renumber as renumber_section
from .budget import BudgetExceeded
from .limits import SmartModuleError

if TYPE_CHECKING:
    from .budget import MemoryBudget
    from .engine import Instance

SHARING_KINDS = ("array_map", "aggregate")  # kinds whose outputs may share an offset

RECORDS_BYTES_MAX = 64 << 20  # a decompressed records section

# Told of one stage's call on one batch: (NAME@VERSION, seconds, fuel used, the error's reason or None).
Observe = Callable[[str, float, int, "str | None"], None]


@dataclass
class Stage:
    label: str  # name@version, for errors
    instance: Instance


class ChainError(Exception):
    """A module of the chain failed on a batch; the message says which, where and why."""

    def __init__(self, label: str, kind: str, reason: str, message: str, offset: int | None,
                 in_request: bool = False) -> None:
        # On produce the records have no log offsets yet: the position is the record's in the request.
        where = "" if offset is None else f" at record {offset} of the request" if in_request else f" at offset {offset}"
        super().__init__(f"SmartModule {label} ({kind}) failed{where}: {reason}: {message}")
        self.label = label
        self.kind = kind
        self.reason = reason
        self.offset = offset


class Chain:
    """The stages of one stream or one connection's produce chain.

    Calls run on worker threads (core/spu/module_pool.py), one at a time per chain. ``close``
    frees every instance at once, or, while a call runs, as soon as it returns: a stream that
    ends never frees memory a worker is still using, and never leaves it for a collector.
    """

    def __init__(self, stages: Sequence[Stage], on_close: Callable[[], None] | None = None,
                 budget: "MemoryBudget | None" = None, observe: "Observe | None" = None) -> None:
        self.stages = list(stages)
        self.observe = observe  # told of every stage call (the SPU's metrics); runs on the calling thread
        self.records_in = 0
        self.records_out = 0
        self._lock = threading.Lock()
        self._busy = False
        self._closing = False
        self._on_close = on_close
        self.budget = budget  # also holds the aggregates' accumulators (host memory) while they live
        self._accumulators_held = 0

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            if self._busy:
                return  # the running call closes it when it returns
        self._free()

    def _free(self) -> None:
        for stage in self.stages:
            stage.instance.close()
        if self.budget is not None and self._accumulators_held:
            self.budget.give_back(self._accumulators_held)
            self._accumulators_held = 0
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def run(self, data: bytes, batch_bytes_max: int, renumber: bool = False, verified: bool = False,
            start: int = 0, time_budget_s: float | None = None) -> tuple[bytes, int | None]:
        """:meth:`apply` from byte ``start`` of ``data``, stopping between batches once
        ``time_budget_s`` has passed: ``(output, where it stopped or None when done)``.
        Thread-safe against :meth:`close`; raises ChainError("closed") on a closed chain."""
        with self._lock:
            if self._closing:
                raise ChainError(self.stages[0].label if self.stages else "?", "chain", "closed",
                                 "the stream ended", None)
            self._busy = True
        try:
            result = self._run(data, batch_bytes_max, renumber, verified, start, time_budget_s)
            self._hold_accumulators()
            return result
        finally:
            with self._lock:
                self._busy = False
                free = self._closing
            if free:
                self._free()

    @property
    def accumulators(self) -> list[bytes]:
        """Each stage's aggregate accumulator (empty for other kinds), to resume a stream."""
        return [s.instance.accumulator or b"" for s in self.stages]

    def apply(self, data: bytes, batch_bytes_max: int, renumber: bool = False, verified: bool = False) -> bytes:
        """Run the chain over every batch in ``data``; the output batches, back to back.

        ``renumber`` (the produce path): offset deltas are made 0..n-1, since the log assigns
        new offsets; only needed when a stage may emit several records per offset.
        ``verified``: the batches come from the log, whose reader checked their CRCs; a
        produce request's batches are checked here, so a damaged one is never laundered into
        an output batch with a fresh CRC.
        """
        return self._run(data, batch_bytes_max, renumber, verified, 0, None)[0]

    def _hold_accumulators(self) -> None:
        """Hold the accumulators' bytes in the budget (they live in host memory between calls)."""
        if self.budget is None:
            return
        n = sum(len(s.instance.accumulator or b"") for s in self.stages if s.instance.kind == "aggregate")
        delta = n - self._accumulators_held
        if delta > 0:
            try:
                self.budget.take(delta, "the chain's aggregate accumulators")
            except BudgetExceeded as e:
                last = next(s for s in reversed(self.stages) if s.instance.kind == "aggregate")
                raise ChainError(last.label, "aggregate", e.reason, str(e), None) from None
        elif delta < 0:
            self.budget.give_back(-delta)
        self._accumulators_held = n

    def _run(self, data: bytes, batch_bytes_max: int, renumber: bool, verified: bool, start: int,
             time_budget_s: float | None) -> tuple[bytes, int | None]:
        if not isinstance(data, bytes):
            data = bytes(data)
        out = []
        deadline = None if time_budget_s is None else time.monotonic() + time_budget_s
        batches = _headers(data, batch_bytes_max, start) if verified else iter_batches(data, batch_bytes_max)
        for pos, h in batches:
            if pos < start:
                continue
            if deadline is not None and out and time.monotonic() >= deadline:
                return b"".join(out), pos
            if h.is_control:
                out.append(data[pos:pos + h.size])
                continue
            batch = self._apply_batch(data, pos, h, renumber)
            out.append(batch if batch is not None else b"")
        return b"".join(out), None

    def _apply_batch(self, data: bytes, pos: int, h: BatchHeader, renumber: bool) -> bytes | None:
        start, end = pos + HEADER_SIZE, pos + h.size
        if h.codec == CODEC_NONE:
            section = data
        else:
            section = decompress(h.codec, data[start:end], RECORDS_BYTES_MAX)
            start, end = 0, len(section)
        count = h.record_count
        self.records_in += count
        shared = False  # whether this stage's input may repeat offsets (an earlier stage could)
        for stage in self.stages:
            began = time.perf_counter()
            try:
                result = stage.instance.call(count, h.base_offset, h.first_timestamp, section, h.last_offset_delta,
                                             start, end, shared)
            except SmartModuleError as e:
                if self.observe is not None:
                    self.observe(stage.label, time.perf_counter() - began, stage.instance.fuel_used(), e.reason)
                offset = None
                message = str(e)
                if e.record_index is not None:
                    offset = _offset_of(section[start:end], e.record_index, h.base_offset)
                    if offset is not None:  # "at offset 7: map refused record 0" names one record twice
                        message = message.replace(f"refused record {e.record_index}", "refused the record", 1)
                raise ChainError(stage.label, stage.instance.kind, e.reason, message, offset, renumber) from None
            if self.observe is not None:
                self.observe(stage.label, time.perf_counter() - began, stage.instance.fuel_used(), None)
            section, count = result.records, result.record_count
            start, end = 0, len(section)
            shared = shared or stage.instance.kind in SHARING_KINDS
            if count == 0:
                return None
        self.records_out += count
        if renumber and any(s.instance.kind in SHARING_KINDS for s in self.stages):
            # The log gives every record its own offset: several outputs of one input get
            # consecutive offsets. The batch covers at least the input's offsets, so an
            # idempotent producer's sequence range is kept unless the chain expanded it.
            last = max(count - 1, h.last_offset_delta)
            if last != h.last_offset_delta and h.producer_id >= 0:
                raise ChainError(self.stages[-1].label, self.stages[-1].instance.kind, "badOutput",
                                 f"{count} records from a batch of {h.last_offset_delta + 1} offsets: an idempotent "
                                 "producer's batch cannot grow on the produce path (produce with idempotent=False)",
                                 None)
            return encode_batch(renumber_section(section, count), count, first_timestamp=h.first_timestamp,
                                max_timestamp=h.max_timestamp, last_offset_delta=last, producer_id=h.producer_id,
                                producer_epoch=h.producer_epoch, base_sequence=h.base_sequence)
        if renumber:
            return encode_batch(section, count, first_timestamp=h.first_timestamp, max_timestamp=h.max_timestamp,
                                last_offset_delta=h.last_offset_delta, producer_id=h.producer_id,
                                producer_epoch=h.producer_epoch, base_sequence=h.base_sequence)
        return encode_batch(section, count, first_timestamp=h.first_timestamp, max_timestamp=h.max_timestamp,
                            base_offset=h.base_offset, leader_epoch=h.leader_epoch,
                            last_offset_delta=h.last_offset_delta)


def _headers(data: bytes, batch_bytes_max: int, pos: int = 0) -> Iterator[tuple[int, BatchHeader]]:
    """Headers of already verified batches from byte ``pos``: header fields and bounds only, no CRC."""
    while pos < len(data):
        h = parse_header(data, pos)
        check_header(h, pos, batch_bytes_max)
        if pos + h.size > len(data):
            raise InvalidBatchError(f"batch at byte {pos} runs past the data", pos)
        yield pos, h
        pos += h.size


def _offset_of(section: bytes, index: int, base_offset: int) -> int | None:
    """The offset of record ``index`` of an input section (walks the lengths; errors only)."""
    import struct

    pos = 0
    for _ in range(index):
        if pos + 4 > len(section):
            return None
        pos += 4 + struct.unpack_from("<I", section, pos)[0]
    if pos + 17 > len(section):
        return None
    return base_offset + struct.unpack_from("<I", section, pos + 13)[0]
