"""What a topic's config asks of a produce request (core/spu/produce_rules.py), as pure
functions: the batch size limit, keys in a compacted topic, the topic's codec."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kolk.metadata.topic_config import resolve
from kolk.segments import build_batch, decode_records
from kolk.segments.batch import CODEC_GZIP, CODEC_NONE, CODEC_ZSTD, iter_batches, parse_header
from kolk.segments.errors import InvalidBatchError
from kolk.spu.lifecycle import LifecycleConfig, log_config_for
from kolk.spu.produce_rules import needs_work, prepare, size_refusal

NOW = 1_700_000_000_000


def config(**kw: str):
    return resolve({k: str(v) for k, v in kw.items()}, {}, 3)


def test_a_batch_over_max_message_bytes_is_refused_naming_the_limit() -> None:
    small = build_batch([(None, b"x" * 100)], first_timestamp=NOW)
    big = build_batch([(None, b"x" * 3000)], first_timestamp=NOW)
    tc = config(max_message_bytes=2048)
    assert size_refusal(small, tc, "t") is None
    why = size_refusal(small + big, tc, "t")
    assert why == (f"a batch of {len(big)} bytes (at byte {len(small)} of the request) is more than the "
                   "max_message_bytes of topic t (2048); send smaller batches or raise it with kolk topic alter")


def test_a_keyless_record_in_a_compacted_topic_is_refused_naming_it() -> None:
    ok = build_batch([(b"k1", b"v"), (b"k2", None)], first_timestamp=NOW)
    bad = build_batch([(b"k1", b"v"), (None, b"no key")], first_timestamp=NOW)
    tc = config(cleanup_policy="compact")
    assert needs_work(ok, tc)
    assert prepare(ok, tc, "users") == ok  # keyed (a tombstone too): unchanged
    with pytest.raises(InvalidBatchError, match=r"^record 1 of the batch at byte 0 has no key: topic users is "
                                                r"compacted \(cleanup_policy compact\)"):
        prepare(bad, tc, "users")
    with pytest.raises(InvalidBatchError, match="record 0 of the batch at byte"):
        prepare(ok + build_batch([(None, b"v")], first_timestamp=NOW), config(cleanup_policy="compact,delete"), "u")


def test_a_delete_topic_keeping_what_the_producer_sent_has_nothing_to_do() -> None:
    data = build_batch([(None, b"v")], first_timestamp=NOW, codec=CODEC_GZIP)
    assert not needs_work(data, config())
    assert not needs_work(data, config(compression="gzip"))
    assert needs_work(data, config(compression="zstd"))


records = st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=20)), st.one_of(st.none(), st.binary(max_size=200))),
                   min_size=1, max_size=30)


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(records, min_size=1, max_size=4),
       source=st.sampled_from([CODEC_NONE, CODEC_GZIP, CODEC_ZSTD]),
       target=st.sampled_from(["none", "gzip", "zstd"]))
def test_recompression_keeps_every_record_and_header_field(batches: list, source: int, target: str) -> None:
    data = b"".join(build_batch(b, first_timestamp=NOW + i, codec=source, producer_id=7 + i, producer_epoch=1,
                                base_sequence=10 * i) for i, b in enumerate(batches))
    out = prepare(data, config(compression=target), "t")
    codes = {"none": CODEC_NONE, "gzip": CODEC_GZIP, "zstd": CODEC_ZSTD}
    before = list(iter_batches(data, 1 << 24))
    after = list(iter_batches(out, 1 << 24))  # validates each batch, CRC included
    assert len(before) == len(after)
    for (p, h), (q, g) in zip(before, after):
        assert g.codec == codes[target]
        assert (g.base_offset, g.last_offset_delta, g.first_timestamp, g.max_timestamp, g.producer_id,
                g.producer_epoch, g.base_sequence, g.record_count) == (
            h.base_offset, h.last_offset_delta, h.first_timestamp, h.max_timestamp, h.producer_id,
            h.producer_epoch, h.base_sequence, h.record_count)
        assert decode_records(out, q) == decode_records(data, p)
    assert parse_header(out, 0).codec == codes[target]


def test_a_topic_that_only_compacts_never_deletes_by_size_or_age() -> None:
    lc = log_config_for(config(cleanup_policy="compact", retention_ms=1000, retention_bytes=4096,
                               segment_bytes=8192, max_message_bytes=4096))
    assert (lc.retention_ms, lc.retention_bytes, lc.segment_bytes) == (-1, -1, 8192)
    both = log_config_for(config(cleanup_policy="compact,delete", retention_ms=1000))
    assert both.retention_ms == 1000


@pytest.mark.parametrize("kw,message", [
    ({"retention_interval_ms": 99}, "--retention-interval-ms must be from 100 to 86400000, got 99"),
    ({"cleaner_interval_ms": 0}, "--cleaner-interval-ms must be from 100 to 86400000, got 0"),
    ({"cleaner_bytes_per_s": 1}, "--cleaner-bytes-per-s must be from 65536 to 2^40, got 1"),
    ({"cleaner_key_map_bytes": 1}, "--cleaner-key-map-mib must be from 1 to 16384, got 0"),
])
def test_lifecycle_limits_are_checked(kw: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        LifecycleConfig(**kw)
    assert str(e.value) == message
