"""Consumer groups: the pure parts shared by the client and the SPU's coordinator.

names.py (group names, the offsets topic, which partition coordinates a group), records.py (the
records of ``_consumer_offsets``), assignors.py (range, round-robin, sticky), state.py (one group's
membership as a state machine: events in, effects out). No I/O here; the coordinator's edge is
core/spu/coordinator.py, the member's is core/client/group_consumer.py. docs/consumers.md.
"""
