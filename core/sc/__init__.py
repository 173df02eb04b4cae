"""The SC room: the stream controller, the metadata service of the cluster.

``server.py`` (Raft, controllers, watch streams), ``api.py`` (its side of the wire),
``state.py`` (the Raft state machine over ``kolk.metadata``) and ``main.py`` (``kolk sc``).
It imports nothing of ``kolk.spu`` or ``kolk.cli``.
"""
