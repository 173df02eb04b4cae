"""Masking of whole record batches on the consume path (DESIGN.md §7: policy → masking →
SmartModules → client).

:func:`mask_batches` takes the batches a fetch read from the log and the ``(path,
replacement)`` pairs the policy gives the reader for that topic (``Policy.masks``), and
returns batches whose record values have those JSON fields replaced (security/jsonmask.py).
A batch none of whose values changed is passed through byte for byte; a changed batch is
re-encoded with the same header fields (offsets, timestamps, producer fields, codec) and a
new CRC, so its records keep their offsets. Control batches are never touched.

Masking fails closed: a batch whose records cannot be decoded raises (nothing unmasked goes
out), and a trailing partial batch is dropped (a reader ignores it anyway).
"""

from __future__ import annotations

from typing import Sequence

from ..segments.batch import HEADER_SIZE, parse_header
from ..segments.records import decode_records, encode_batch, encode_section
from .jsonmask import mask_json


def mask_batches(data: bytes, masks: Sequence[tuple[str, str]]) -> bytes:
    """``data`` (whole batches, back to back) with ``masks`` applied to every record value."""
    if not masks or not data:
        return data
    out: list[bytes] = []
    changed = False
    pos = 0
    n = len(data)
    while n - pos >= HEADER_SIZE:
        header = parse_header(data, pos)
        end = pos + header.size
        if end > n:
            break
        if header.is_control:
            out.append(data[pos:end])
            pos = end
            continue
        base, first_ts = header.base_offset, header.first_timestamp
        masked = []
        hit = False
        for offset, timestamp, key, value, headers in decode_records(data, pos):
            offset_delta, ts_delta = offset - base, timestamp - first_ts
            if value:
                new = mask_json(value, masks)
                if new is not value:
                    hit = True
                    value = new
            masked.append((offset_delta, ts_delta, key, value, headers))
        if not hit:
            out.append(data[pos:end])
        else:
            changed = True
            out.append(encode_batch(
                encode_section(masked), header.record_count, first_timestamp=first_ts,
                max_timestamp=header.max_timestamp, base_offset=base, leader_epoch=header.leader_epoch,
                last_offset_delta=header.last_offset_delta, codec=header.codec, control=False,
                producer_id=header.producer_id, producer_epoch=header.producer_epoch,
                base_sequence=header.base_sequence))
        pos = end
    if not changed and pos == n:
        return data
    return b"".join(out)
