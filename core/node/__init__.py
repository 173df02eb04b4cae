"""What the SC and the SPU share as servers: ``serve.py`` (running a node until signalled,
its TLS options), ``authz.py`` (enforcing the policy on every call) and ``audit.py`` (the
``_audit`` topic). Imports nothing of ``kolk.sc``, ``kolk.spu`` or ``kolk.cli``.
"""
