"""Masking of whole record batches on the consume path (DESIGN.md §7: policy → masking →
SmartModules → client; docs/security.md "Masking fails closed").

:func:`mask_batches` takes the batches a fetch read from the log and the ``(path,
replacement)`` pairs the policy gives the reader for that topic (``Policy.masks``), and
returns batches whose record values have those JSON fields replaced (security/jsonmask.py:
a value that is not strict JSON is replaced whole). A batch none of whose values changed is
passed through byte for byte; a changed batch is re-encoded with the same header fields
(offsets, timestamps, producer fields, codec, control bit) and a new CRC, so its records
keep their offsets. Control batches are masked like any other: clients cannot produce them
(core/spu/api.py refuses them), but one written before that rule must not be a way around it.

Masking fails closed: a batch whose records cannot be decoded (or re-encoded) is never sent
unmasked; :class:`UnmaskableBatchError` says which and why, and carries the masked batches
before it. The caller serves those (the read ends at the bad batch's offset), or, when the
bad batch comes first, answers the read with a typed error (the SPU sends ``corruptBatch``).
A trailing partial batch is dropped (a reader ignores it anyway). Nothing else can escape:
:func:`mask_json` never raises on a value.

Masking is pure Python and costs CPU on the server's event loop, so a server masks with
:func:`mask_read`, which bounds the work per answer (``MASK_RECORDS_PER_RESPONSE_MAX``
records; the caller reads at most ``MASK_BYTES_PER_RESPONSE_MAX`` for a masked reader; the
reader continues from ``nextOffset``) and hands the loop back every ``MASK_SLICE_S`` of
masking. A value longer than ``MASKED_VALUE_BYTES_MAX`` is redacted whole, unparsed
(security/jsonmask.py).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Generator, Sequence

from ..segments.batch import HEADER_SIZE, LENGTH_PREFIX_SIZE, parse_header
from ..segments.records import decode_records, encode_batch, encode_section
from .jsonmask import mask_json

# How long a masked read masks before handing the event loop back to other connections.
MASK_SLICE_S = 0.002
# A masked reader's fetch answer or stream push reads at most MASK_BYTES_PER_RESPONSE_MAX and
# masks at most MASK_RECORDS_PER_RESPONSE_MAX records (always at least one whole batch; the
# reader continues from nextOffset).
MASK_BYTES_PER_RESPONSE_MAX = 1 << 20
MASK_RECORDS_PER_RESPONSE_MAX = 10_000


class UnmaskableBatchError(Exception):
    """A batch of a read cannot be masked (its records do not decode): it is not sent.
    ``offset`` is its base offset (the message names it and the reason); ``masked_before``
    the masked batches of the read before it, which may be sent (empty when it came first)."""

    def __init__(self, offset: int, reason: str, masked_before: bytes = b"") -> None:
        super().__init__(f"the batch at offset {offset} cannot be masked for this reader ({reason}); "
                         "it is withheld, not sent unmasked")
        self.offset = offset
        self.masked_before = masked_before


@dataclass(frozen=True)
class MaskedRead:
    """What a masked read sends: ``data``, the masked batches, and ``stopped_at``, the base
    offset of the first batch of the read left unmasked because the budget ran out (the
    answer's ``nextOffset`` is then that offset), or None when the whole read is in ``data``."""

    data: bytes
    stopped_at: int | None = None


def mask_batches(data: bytes, masks: Sequence[tuple[str, str]]) -> bytes:
    """``data`` (whole batches, back to back) with ``masks`` applied to every record value,
    all of it, in one go (no budget: for tools and tests; servers use :func:`mask_read`).
    Raises only :class:`UnmaskableBatchError`."""
    steps = _mask_steps(data, masks, None)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value.data


async def mask_read(data: bytes, masks: Sequence[tuple[str, str]],
                    records_max: int = MASK_RECORDS_PER_RESPONSE_MAX, slice_s: float = MASK_SLICE_S) -> MaskedRead:
    """:func:`mask_batches` for a server's event loop: masks whole batches until the batch
    that takes the count of masked records to ``records_max`` or past it (at least one batch),
    and hands the loop back (``asyncio.sleep(0)``) whenever it has masked for ``slice_s``, so
    other connections are answered meanwhile. Raises only :class:`UnmaskableBatchError`."""
    steps = _mask_steps(data, masks, records_max)
    deadline = time.monotonic() + slice_s
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value
        if time.monotonic() >= deadline:
            await asyncio.sleep(0)
            deadline = time.monotonic() + slice_s


def _mask_steps(data: bytes, masks: Sequence[tuple[str, str]],
                records_max: int | None) -> Generator[None, None, MaskedRead]:
    """The masking, as a generator that yields after every record (a point where a driver may
    pause) and returns the :class:`MaskedRead`. Stops after the batch that reaches
    ``records_max`` masked records (None: no limit)."""
    if not masks or not data:
        return MaskedRead(data)
    out: list[bytes] = []
    changed = False
    pos = 0
    n = len(data)
    records = 0
    while n - pos >= HEADER_SIZE:
        header = parse_header(data, pos)
        if header.batch_length < HEADER_SIZE - LENGTH_PREFIX_SIZE:
            raise UnmaskableBatchError(header.base_offset, f"batch_length {header.batch_length} is too small",
                                       b"".join(out))
        end = pos + header.size
        if end > n:
            break
        if records_max is not None and records >= records_max and pos > 0:
            return MaskedRead(b"".join(out), header.base_offset)  # the budget is spent: the reader reads on
        try:
            masked = yield from _mask_batch(data, pos, masks)
        except Exception as e:  # noqa: BLE001 - whatever the bytes, the batch is withheld, typed
            raise UnmaskableBatchError(header.base_offset, f"{type(e).__name__}: {e}", b"".join(out)) from None
        records += max(header.record_count, 1)
        if masked is None:
            out.append(data[pos:end])
        else:
            changed = True
            out.append(masked)
        pos = end
    if not changed and pos == n:
        return MaskedRead(data)
    return MaskedRead(b"".join(out))


def _mask_batch(data: bytes, pos: int,
                masks: Sequence[tuple[str, str]]) -> Generator[None, None, bytes | None]:
    """The batch at ``pos`` re-encoded with its values masked, or None when none changed
    (a generator that yields after each record's value, see :func:`_mask_steps`)."""
    header = parse_header(data, pos)
    base, first_ts = header.base_offset, header.first_timestamp
    records = []
    hit = False
    for offset, timestamp, key, value, headers in decode_records(data, pos):
        if value:
            new = mask_json(value, masks)
            if new is not value:
                hit = True
                value = new
        records.append((offset - base, timestamp - first_ts, key, value, headers))
        yield
    if not hit:
        return None
    return encode_batch(
        encode_section(records), header.record_count, first_timestamp=first_ts,
        max_timestamp=header.max_timestamp, base_offset=base, leader_epoch=header.leader_epoch,
        last_offset_delta=header.last_offset_delta, codec=header.codec, control=header.is_control,
        producer_id=header.producer_id, producer_epoch=header.producer_epoch,
        base_sequence=header.base_sequence)
