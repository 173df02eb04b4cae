"""Kolk's wire protocol: the Cap'n Proto schema, the frames that carry it, limits and errors.

Everything here is shared by client and server. ``framing`` is sans-IO (bytes in, frames out);
``channel`` is the thin asyncio edge that serves and calls over TCP or TLS.
"""
