"""What the SPU keeps in its index beside each replica's log (PARTITION_STATE keys, deleted
with the log): the partition's incarnation, which tells a log of a topic deleted and created
again from the new one's, and the idempotent-producer table saved after each clean.
"""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

from ..segments import LogConfig
from ..segments.index_db import PARTITION_STATE, Q, partition_key, state_key
from ..segments.producer_state import SEQUENCE_MODULUS, ProducerStateTable

if TYPE_CHECKING:
    from .replica import Replica

log = logging.getLogger("kolk.spu")

INCARNATION_KEY = b"incarnation"  # the partition's incarnation
PRODUCERS_KEY = b"producers"  # the idempotent-producer table saved after a clean (save_producers)
PRODUCERS_SAVED_MAX = 10_000


def save_producers(store: Any, replica: "Replica") -> None:
    """Keep the replica's idempotent-producer table in the index after a clean: the cleaner may
    have removed every batch of a producer, and the table is otherwise rebuilt from the batch
    headers left (Kafka keeps such a producer's last batch instead; KIP-360)."""
    if len(replica.producers) > PRODUCERS_SAVED_MAX:
        log.warning("%s: %d idempotent producers, more than %d: their state is not kept across cleaning",
                    replica.name, len(replica.producers), PRODUCERS_SAVED_MAX)
        return
    key = state_key(partition_key(replica.name), PRODUCERS_KEY)
    store.index.put(PARTITION_STATE, key, json.dumps(replica.producers.snapshot(), separators=(",", ":")).encode())
    store.index.flush()


def restore_producers(store: Any, replica: "Replica") -> None:
    """Add to the replica's table (rebuilt from its batch headers) the producers saved by
    :func:`save_producers` whose batches all lie below the cleaned offset (committed, never
    truncated: the cleaner may have removed them) and that the headers no longer name."""
    raw = store.index.get(PARTITION_STATE, state_key(partition_key(replica.name), PRODUCERS_KEY))
    if raw is None:
        return
    try:
        saved = json.loads(raw)
        ProducerStateTable.from_snapshot(saved)  # checks it whole before anything is taken
    except (ValueError, TypeError, KeyError) as e:
        log.error("%s: the saved producer state is unreadable (%s); rebuilt from the log only", replica.name, e)
        return
    cleaned = replica.log.cleaned_offset
    table = replica.producers
    for p in saved["producers"]:
        pid, batches = int(p["producer_id"]), p["batches"]
        if pid in table or not all(int(b[3]) < cleaned for b in batches):
            continue
        for first, last, base_offset, last_offset in batches:
            count = (int(last) - int(first)) % SEQUENCE_MODULUS + 1
            table.record(pid, int(p["epoch"]), int(first), count, int(base_offset), int(last_offset))


def open_replica_log(store: Any, name: str, incarnation: int, config: LogConfig) -> Any:
    """Open the log of partition ``name`` whose spec says ``incarnation``. A log on disk of
    another incarnation belongs to a topic of the same name that was deleted while this SPU
    was down: it is deleted and the replica starts empty. A new log records its incarnation."""
    key = state_key(partition_key(name), INCARNATION_KEY)
    existed = os.path.isdir(os.path.join(store.logs_dir, name))
    if existed:
        raw = store.index.get(PARTITION_STATE, key)
        found = Q.unpack(raw)[0] if raw is not None else 0
        if found != incarnation:
            log.info("%s: the log here is of incarnation %d, the partition's is %d (its topic was deleted and "
                     "created again): deleting the old log", name, found, incarnation)
            store.delete_log(name)
            existed = False
    lg = store.open_log(name, config)
    if not existed and incarnation:
        store.index.put(PARTITION_STATE, key, Q.pack(incarnation))
        store.index.flush()
    return lg
