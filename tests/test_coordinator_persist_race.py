"""OffsetsPartition.persist when a second change arrives just as the first write ends (found by
the Node client's group test: two members joining at once hung the SPU's event loop).

The second caller ran in the loop turn where the write finished but before its writer resumed:
it saw a done `persisting` future, and awaiting a done future does not yield, so it spun forever.
"""

from __future__ import annotations

import asyncio
import threading
import types

from kolk.groups.state import Group
from kolk.spu.coordinator import GroupEntry, OffsetsPartition


def test_a_change_arriving_as_a_write_ends_is_persisted_without_spinning() -> None:
    async def main() -> tuple[int, int, int]:
        entry = GroupEntry(Group("g"))
        writes: list[int] = []
        late: list[asyncio.Task[None]] = []
        part = types.SimpleNamespace()

        async def write(records: list, what: str) -> None:  # the offsets partition's append
            await asyncio.sleep(0.01)
            writes.append(entry.dirty)
            if len(writes) == 1:
                # A heartbeat's change handled in the same loop turn the write completes in.
                entry.dirty += 1
                late.append(asyncio.ensure_future(OffsetsPartition.persist(part, "g", entry)))

        part.write = write
        entry.dirty = 1
        await asyncio.wait_for(OffsetsPartition.persist(part, "g", entry), 5)
        await asyncio.wait_for(asyncio.gather(*late), 5)
        return len(writes), entry.persisted, entry.dirty

    # In a thread: a spinning loop never yields to a timeout of its own, so the test fails
    # (instead of hanging) when the loop spins.
    out: list[tuple[int, int, int]] = []
    t = threading.Thread(target=lambda: out.append(asyncio.run(main())), daemon=True)
    t.start()
    t.join(20)
    assert not t.is_alive(), "persist spun: the event loop never got back to the first writer"
    assert out == [(2, 2, 2)]
