"""Every limit of the Raft tunnel (raft/tunnel.py), named once (docs/security.md, "Raft").

The frame cap is derived from the largest message pysyncobj legitimately sends, which is
bounded by the largest command :class:`RaftNode` accepts (``RaftConfig.command_bytes_max``,
checked in ``RaftNode.propose``, so no committed entry can ever be too large to replicate; the
SC passes its request limit, core/protocol/limits.py ``FRAME_BODY_BYTES_MAX``):

* an ``append_entries`` message carries entries until their data reaches pysyncobj's batch
  size (``appendEntriesBatchSizeBytes``, 64 KiB), *including* the entry that crosses it, so
  at most one whole command plus 64 KiB of small entries, each small entry with at most
  ``ENTRY_PICKLE_OVERHEAD_MAX`` bytes of pickle around it (a 1-byte no-op entry costs ~22);
  a lone entry larger than the batch size travels in 64 KiB chunks, and so do snapshots
  (``logCompactionBatchSize``);
* that is pickled, zlib-compressed (which can grow incompressible data by 5 bytes per
  16 KiB block) and encrypted with Fernet (base64 of version, time, IV, the padded
  ciphertext and an HMAC: 4/3 of the size plus 76 bytes).
"""

from __future__ import annotations

# The largest command when the embedder does not say (RaftConfig.command_bytes_max).
COMMAND_BYTES_MAX_DEFAULT = 1 << 20
APPEND_BATCH_BYTES = 1 << 16        # pysyncobj's appendEntriesBatchSizeBytes and logCompactionBatchSize
ENTRY_PICKLE_OVERHEAD_MAX = 32      # pickle bytes around one entry (tuple, bytes header, index, term)
MESSAGE_ENVELOPE_BYTES = 4096       # the message dict: type, term, indexes, keys


def _fernet_len(n: int) -> int:
    return (1 + 8 + 16 + (n // 16 + 1) * 16 + 32 + 2) // 3 * 4


def _zlib_bound(n: int) -> int:
    return n + 5 * (n // 16383 + 1) + 6


def frame_bytes_max(command_bytes_max: int) -> int:
    """The largest frame (the 4-byte length prefix excluded) a peer may announce when no
    command exceeds ``command_bytes_max``; larger ones close the connection before a byte of
    the frame is buffered. Rounded up to a MiB (25 MiB for the SC's 16 MiB + 64 KiB)."""
    payload = command_bytes_max + APPEND_BATCH_BYTES * (1 + ENTRY_PICKLE_OVERHEAD_MAX) + MESSAGE_ENVELOPE_BYTES
    return -(-_fernet_len(_zlib_bound(payload)) // (1 << 20)) * (1 << 20)

FRAME_HEADER_BYTES = 4              # pysyncobj's length prefix: struct 'i', native order

HANDSHAKE_TIMEOUT_S = 2.0           # TLS and the secret's challenge-response, from accept or connect
CONNECT_TIMEOUT_S = 2.0             # a TCP connect to a peer, or a connect to pysyncobj's private socket
ACCEPT_RATE_PER_S = 64.0            # new inbound connections admitted a second (a peer needs a few)
ACCEPT_BURST = 64                   # ... and at once; past that the listener is not read for a while
ACCEPT_PAUSE_MIN_S = 0.02           # the shortest pause of the listener (so a flood cannot make it spin)
ACCEPT_BACKOFF_S = 1.0              # the pause after accept() itself failed (out of file descriptors)
INBOUND_CONNECTIONS_MAX = 64        # accepted on the Raft port at once, handshaking or not
OUTBOUND_CONNECTIONS_MAX = 64       # forwarders to peers at once (pysyncobj opens one per peer)
STREAM_BUFFER_BYTES = 1 << 16       # asyncio stream reader limit (it holds at most twice this)
WRITE_HIGH_BYTES = 1 << 18          # past this unsent, a side's reader waits (flow control)
REFUSAL_LOG_LINES_PER_WINDOW = 10   # refusal lines logged per window; the rest are counted
REFUSAL_LOG_WINDOW_S = 10.0
STOP_TIMEOUT_S = 5.0                # the tunnel thread must end within this at stop
