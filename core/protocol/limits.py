"""Every limit the wire protocol enforces, named once and shared by client and server.

The server checks each request against these before any handler sees it (``bounds``); the
client uses the same numbers to refuse early what the server would refuse. docs/protocol.md
lists them.
"""

from __future__ import annotations

# ---- frames and connections
FRAME_HEADER_BYTES = 16
# A frame body larger than this is refused before a byte of it is decoded. The largest
# legitimate bodies are a produce of PRODUCE_BYTES_MAX and a fetch answer of FETCH_BYTES_MAX,
# plus their envelopes.
FRAME_BODY_BYTES_MAX = (16 << 20) + (64 << 10)
REQUESTS_IN_FLIGHT_MAX = 256      # per connection; past it the server stops reading the socket
FRAMES_PER_TURN_MAX = 16          # frames a server takes from one connection per turn of its event loop
STREAMS_PER_CONNECTION_MAX = 64   # open streams (consume streams, watches) per connection
# Fair use of a server's streams (core/protocol/fair_use.py, docs/security.md "Fair use"). An
# identity is a TLS identity; peers without one are counted by network (IPv4 /24, IPv6 /64).
STREAMS_PER_SERVER_MAX = 1000     # open streams on one SPU, all identities together
IDENTITIES_TO_FILL_A_SERVER_MIN = 8  # identities at their stream limit it takes to fill an SPU
STREAMS_PER_IDENTITY_MAX = STREAMS_PER_SERVER_MAX // IDENTITIES_TO_FILL_A_SERVER_MIN  # 125, per SPU
HELD_BYTES_PER_IDENTITY_MAX = 64 << 20  # pushed and not yet taken by one identity's readers, per SPU
HELD_BYTES_PER_SERVER_MAX = 256 << 20   # the same, all identities of one SPU together
CONNECTIONS_PER_IDENTITY_MAX = 256  # client connections of one identity to one SPU (node certificates: no limit)
REFUSED_CONNECTION_LINGER_S = 10.0  # a refused connection is closed after its first request, or after this
# Connections in their TLS handshake at once, per listener (the SC's admin port, an SPU's client
# port), counted from accept; one more is closed at once, before asyncio gives it a 256 KiB TLS
# buffer (core/protocol/accept.py, docs/security.md "Fair use"). 128 silent ones hold ~40 MiB for
# at most the handshake timeout (channel.TLS_HANDSHAKE_TIMEOUT_S, 10 s); a handshake takes ms.
TLS_HANDSHAKES_MAX = 128
WRITE_BUFFER_HIGH_BYTES = 4 << 20  # past it a connection stops taking requests until drained
STREAM_WINDOW_BYTES_MAX = 64 << 20  # credit a client may grant one stream in total
# Cap'n Proto reader limits: words a message may make the reader visit, and pointer depth.
TRAVERSAL_WORDS_PER_BODY_WORD = 8
TRAVERSAL_WORDS_MIN = 1 << 17  # a handler may read a field more than once
NESTING_MAX = 16

# ---- data plane
PRODUCE_BYTES_MAX = 16 << 20
FETCH_BYTES_MAX = 8 << 20
CHAIN_STAGES_MAX = 16            # SmartModule invocations per request
SMARTMODULE_PARAMS_MAX = 64       # params of one invocation
ACCUMULATOR_BYTES_MAX = 1 << 20
PARTITION_STATUS_MAX = 10_000     # partitions asked about in one partitionStatus
# The limits of masked reads (docs/security.md "Masking fails closed") live beside masking, in
# security/masking.py and security/jsonmask.py: the security room imports no other room.

# ---- metadata
NAME_CHARS_MAX = 255              # topic, partition, object and SmartModule names
TEXT_CHARS_MAX = 4096             # free text: reasons, racks, addresses, keys, values
SPEC_JSON_BYTES_MAX = 8 << 20     # an object's spec (a SmartModule's wasm travels in it)
SPEC_JSON_DEPTH_MAX = 32          # arrays and objects inside one another in a spec (core/sc/spec_json.py)
SPEC_JSON_DIGITS_MAX = 4300       # digits of an integer in a spec (Python's int() limit)
TOPIC_CONFIG_ENTRIES_MAX = 64
REPLICAS_MAX = 256                # entries of an in-sync set
LOST_REPLICAS_MAX = 10_000        # entries of one registerSpu's lost list
PRODUCER_IDS_PER_REQUEST_MAX = 1000
OBJECTS_PER_ANSWER_MAX = 1_000_000  # objects in one listObjects answer or watch push

# ---- diagnostics (nodeDiagnostics, docs/operations.md "Diagnostics")
DIAGNOSTICS_BYTES_MAX = 8 << 20   # one node's answer: versions, settings, log lines, metrics text
DIAGNOSTICS_LOG_LINES_MAX = 5_000  # log lines one answer carries (the node keeps no more)

# ---- node identity without TLS (challenge / authenticate, docs/security.md)
AUTH_NONCE_BYTES = 32             # a connection's challenge nonce
AUTH_TOKEN_BYTES = 32             # HMAC-SHA256 of the cluster secret over the challenge
NODE_NAME_CHARS_MAX = 64          # "spu-<id>" or "sc-<id>"

# ---- consumer groups (docs/consumers.md)
GROUP_NAME_CHARS_MAX = 255        # group names: like topic names, 1-255 of A-Z a-z 0-9 . _ -
GROUP_TOPICS_MAX = 64             # topics one member subscribes to
GROUP_PARTITIONS_MAX = 10_000     # partitions named in one heartbeat's owned or assignment, in all
GROUP_MEMBERS_MAX = 1_000         # members of one group; the next join is refused
GROUPS_PER_COORDINATOR_MAX = 100_000  # groups one SPU coordinates (with members or committed offsets)
COMMIT_OFFSETS_MAX = 10_000       # offsets in one commit or offsetFetch answer
COMMIT_METADATA_CHARS_MAX = 1024  # the text a commit may carry beside each offset
COMMITS_PENDING_MAX = 100_000     # offsets waiting for the coordinator's next write, per SPU
HEARTBEAT_WAIT_MS_MAX = 5_000     # the longest a coordinator holds a heartbeat's answer
SESSION_TIMEOUT_MS_MIN = 1_000
SESSION_TIMEOUT_MS_MAX = 600_000
SESSION_TIMEOUT_MS_DEFAULT = 10_000
REBALANCE_TIMEOUT_MS_MIN = 1_000
REBALANCE_TIMEOUT_MS_MAX = 1_800_000
REBALANCE_TIMEOUT_MS_DEFAULT = 60_000
INSTANCE_ID_CHARS_MAX = 255
MEMBER_ID_CHARS_MAX = 64
