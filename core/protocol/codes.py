"""One definition of every error code on the wire, and of the other enumerated values.

An error travels as ``Error{code, message, leader, retriable, outcomeUnknown}``; ``code`` is
text so that a client in any language can show a code it does not know, and is always one of
:class:`ErrorCode`. Servers fill ``retriable`` and ``outcomeUnknown`` from the table here
unless a case says otherwise; clients map the code to one exception class (core/protocol/errors.py).
"""

from __future__ import annotations

import enum


class ErrorCode(str, enum.Enum):
    # The cluster's state: retry later or elsewhere.
    NOT_LEADER = "notLeader"              # this SC or SPU does not lead; `leader` says where to go
    NO_LEADER = "noLeader"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"           # client side only: nothing answered
    OFFLINE = "offline"                   # a partition without a leader; names the missing replicas
    NOT_ENOUGH_REPLICAS = "notEnoughReplicas"
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = "notEnoughReplicasAfterAppend"
    STORAGE_FULL = "storageFull"
    LIMIT_EXCEEDED = "limitExceeded"      # too many streams or watchers; retry when some close
    TOO_MANY_STREAMS = "tooManyStreams"   # a stream past a fair-use limit; the message names it (retry when some close)
    TOO_MANY_CONNECTIONS = "tooManyConnections"  # a connection past its identity's limit (retry when some close)
    OVERLOADED = "overloaded"             # SmartModule workers, compiler or memory budget busy; the message says which
    OUT_OF_ORDER_SEQUENCE = "outOfOrderSequence"
    NOT_COORDINATOR = "notCoordinator"    # this SPU does not coordinate the group; `leader` says which does, if known
    COORDINATOR_LOADING = "coordinatorLoading"  # the coordinator is reading the group's offsets after a failover
    # The request: fix it before trying again.
    INVALID_ARGUMENT = "invalidArgument"
    INVALID_COMMAND = "invalidCommand"
    UNKNOWN_COMMAND = "unknownCommand"
    MALFORMED = "malformed"               # not a well-formed message
    UNKNOWN_CALL = "unknownCall"          # a request this server does not serve
    TOO_LARGE = "tooLarge"                # a frame, list, text or batch over its limit
    REPLICATION_FACTOR_TOO_HIGH = "replicationFactorTooHigh"
    ALREADY_EXISTS = "alreadyExists"
    NOT_FOUND = "notFound"
    VERSION_CONFLICT = "versionConflict"
    IN_USE = "inUse"
    STALE_EPOCH = "staleEpoch"
    NOT_PARTITION_LEADER = "notPartitionLeader"
    INVALID_BATCH = "invalidBatch"
    OFFSET_OUT_OF_RANGE = "offsetOutOfRange"
    PRODUCER_FENCED = "producerFenced"
    STALE_MEMBER = "staleMember"          # the member left the group (or was removed), or its view of its partitions is old
    FENCED_INSTANCE = "fencedInstance"    # a newer process took over this static member's group_instance_id
    DUPLICATE_SEQUENCE = "duplicateSequence"
    DENIED = "denied"                     # the policy does not allow it
    SMART_MODULE = "smartModule"          # a SmartModule failed; the message names it and the offset
    # The server's side.
    CORRUPT_BATCH = "corruptBatch"
    STORAGE = "storage"
    INTERNAL = "internal"


RETRIABLE = frozenset({
    ErrorCode.NOT_LEADER, ErrorCode.NO_LEADER, ErrorCode.TIMEOUT, ErrorCode.UNAVAILABLE, ErrorCode.OFFLINE,
    ErrorCode.NOT_ENOUGH_REPLICAS, ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND, ErrorCode.STORAGE_FULL,
    ErrorCode.LIMIT_EXCEEDED, ErrorCode.TOO_MANY_STREAMS, ErrorCode.TOO_MANY_CONNECTIONS,
    ErrorCode.OVERLOADED, ErrorCode.NOT_COORDINATOR, ErrorCode.COORDINATOR_LOADING,
})

# A write answered with one of these may have happened although it was not acknowledged.
OUTCOME_UNKNOWN = frozenset({ErrorCode.TIMEOUT, ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND})


def code_of(text: str) -> ErrorCode | None:
    """The ErrorCode for a wire code; None for one this version does not know."""
    try:
        return ErrorCode(text)
    except ValueError:
        return None


class Acks(enum.IntEnum):
    """When a produce is answered (the schema's ``Acks``)."""

    NONE = 0    # once the leader has the batches in its page cache (not durable)
    LEADER = 1  # once the leader has fsynced them
    ALL = 2     # once every in-sync replica has them (the high watermark passed them)

    @classmethod
    def parse(cls, value: "str | int | Acks") -> "Acks":
        """From "none"/"leader"/"all", a number, or an Acks; ValueError naming the choices."""
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise ValueError(f"acks must be one of none, leader, all; got {value!r}") from None
        return cls(value)


class Isolation(enum.IntEnum):
    """How far a consumer reads (the schema's ``Isolation``)."""

    COMMITTED = 0    # up to the high watermark
    UNCOMMITTED = 1  # up to the log end offset
