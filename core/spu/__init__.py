"""The SPU room: the stream processing unit, which stores and serves partitions.

``server.py`` (replicas, metadata by watch), ``api.py``, ``stream.py`` and
``replication_api.py`` (its side of the wire), ``errors.py`` (storage errors to wire errors),
``replica.py``, ``isr.py``, ``follower.py`` (replication), ``disk_faults.py``,
``private_address.py``, ``smartmodules.py`` (the SmartModule registry) and ``main.py``
(``kolk spu``). It imports nothing of ``kolk.sc`` or ``kolk.cli``; it talks to the SC as a
client does (``kolk.client.admin``).
"""
