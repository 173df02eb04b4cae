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
"""

from __future__ import annotations

from typing import Sequence

from ..segments.batch import HEADER_SIZE, LENGTH_PREFIX_SIZE, parse_header
from ..segments.records import decode_records, encode_batch, encode_section
from .jsonmask import mask_json


class UnmaskableBatchError(Exception):
    """A batch of a read cannot be masked (its records do not decode): it is not sent.
    ``offset`` is its base offset (the message names it and the reason); ``masked_before``
    the masked batches of the read before it, which may be sent (empty when it came first)."""

    def __init__(self, offset: int, reason: str, masked_before: bytes = b"") -> None:
        super().__init__(f"the batch at offset {offset} cannot be masked for this reader ({reason}); "
                         "it is withheld, not sent unmasked")
        self.offset = offset
        self.masked_before = masked_before


def mask_batches(data: bytes, masks: Sequence[tuple[str, str]]) -> bytes:
    """``data`` (whole batches, back to back) with ``masks`` applied to every record value.
    Raises only :class:`UnmaskableBatchError`."""
    if not masks or not data:
        return data
    out: list[bytes] = []
    changed = False
    pos = 0
    n = len(data)
    while n - pos >= HEADER_SIZE:
        header = parse_header(data, pos)
        if header.batch_length < HEADER_SIZE - LENGTH_PREFIX_SIZE:
            raise UnmaskableBatchError(header.base_offset, f"batch_length {header.batch_length} is too small",
                                       b"".join(out))
        end = pos + header.size
        if end > n:
            break
        try:
            masked = _mask_batch(data, pos, masks)
        except Exception as e:  # noqa: BLE001 - whatever the bytes, the batch is withheld, typed
            raise UnmaskableBatchError(header.base_offset, f"{type(e).__name__}: {e}", b"".join(out)) from None
        if masked is None:
            out.append(data[pos:end])
        else:
            changed = True
            out.append(masked)
        pos = end
    if not changed and pos == n:
        return data
    return b"".join(out)


def _mask_batch(data: bytes, pos: int, masks: Sequence[tuple[str, str]]) -> bytes | None:
    """The batch at ``pos`` re-encoded with its values masked, or None when none changed."""
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
    if not hit:
        return None
    return encode_batch(
        encode_section(records), header.record_count, first_timestamp=first_ts,
        max_timestamp=header.max_timestamp, base_offset=base, leader_epoch=header.leader_epoch,
        last_offset_delta=header.last_offset_delta, codec=header.codec, control=header.is_control,
        producer_id=header.producer_id, producer_epoch=header.producer_epoch,
        base_sequence=header.base_sequence)
