"""The errors a Kolk client sees. One root, :class:`KolkError`; each subclass says whose fault
it is and whether a retry can help (``retriable``)."""

from __future__ import annotations

from .codes import ErrorCode
from .limits import TEXT_CHARS_MAX


class KolkError(Exception):
    """Root of every error raised by the Kolk client."""

    code = "internal"
    retriable = False
    # True when a write may have happened although the call failed: retry it only with the
    # idempotent producer (which turns a repeat into a duplicate), never blindly.
    outcome_unknown = False

    def __init__(self, message: str, *, code: str | None = None, leader: str | None = None,
                 retriable: bool | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if retriable is not None:
            self.retriable = retriable
        self.leader = leader


class ClusterUnavailableError(KolkError):
    """No SC could be reached, or none had a leader in time. Retry later."""

    code = "unavailable"
    retriable = True


class NotLeaderError(KolkError):
    """This node does not lead; ``leader`` is where to go (None when unknown)."""

    code = "notLeader"
    retriable = True


class RequestTimeoutError(KolkError):
    """No answer in time. A write may or may not have been applied."""

    code = "timeout"
    retriable = True
    outcome_unknown = True


class PartitionOfflineError(KolkError):
    """The partition has no leader: its in-sync replicas are down, or none of its replicas is
    known to hold every acknowledged record. The message names the missing replicas. It comes
    back when one of them returns (retriable), or when an operator accepts the loss with
    ``kolk partition elect --unclean``."""

    code = "offline"
    retriable = True


class InvalidRequestError(KolkError):
    """The request is malformed or asks for something impossible; fix it before retrying."""

    code = "invalidArgument"


class ReplicationFactorTooHighError(InvalidRequestError):
    code = "replicationFactorTooHigh"


class InvalidBatchError(InvalidRequestError):
    """The record batch failed the SPU's checks (CRC, length, header fields); nothing was stored."""

    code = "invalidBatch"


class OffsetOutOfRangeError(InvalidRequestError):
    """The offset is outside what the partition holds (deleted by retention, or not written yet).

    Raised by the consumer (core/protocol/offset_range.py) it also says where the partition's
    records are now: ``offset`` asked, ``log_start_offset`` and ``log_end_offset`` (None when
    unknown, as in an SPU's own answer)."""

    code = "offsetOutOfRange"
    offset: int | None = None
    log_start_offset: int | None = None
    log_end_offset: int | None = None


class CorruptDataError(KolkError):
    """A stored batch failed its CRC on the server; it is fenced and never served."""

    code = "corruptBatch"


class StorageFullError(KolkError):
    """The SPU's disk refused the write; retry once space is freed."""

    code = "storageFull"
    retriable = True


class NotEnoughReplicasError(KolkError):
    """acks=all cannot be honoured with the replicas in sync now; nothing was written."""

    code = "notEnoughReplicas"
    retriable = True


class NotEnoughReplicasAfterAppendError(KolkError):
    """The leader appended the records, but the in-sync set shrank below ``min_in_sync`` before
    they were acknowledged: they may or may not end up committed (Kafka's
    NOT_ENOUGH_REPLICAS_AFTER_APPEND). The idempotent producer's retry settles it."""

    code = "notEnoughReplicasAfterAppend"
    retriable = True
    outcome_unknown = True


class AlreadyExistsError(KolkError):
    code = "alreadyExists"


class NotFoundError(KolkError):
    code = "notFound"


class VersionConflictError(KolkError):
    """A compare-and-set saw another version: read again, then decide."""

    code = "versionConflict"


class InUseError(KolkError):
    code = "inUse"


class StaleEpochError(KolkError):
    code = "staleEpoch"


class ProducerFencedError(KolkError):
    """A newer producer with the same id (a higher producer epoch) has taken over."""

    code = "producerFenced"


class OutOfOrderSequenceError(KolkError):
    """An idempotent batch skipped sequence numbers: an earlier batch of this producer is
    missing on the leader. Retriable while that earlier batch is still being retried."""

    code = "outOfOrderSequence"


class DuplicateSequenceError(KolkError):
    """An idempotent batch was already written, longer ago than the leader remembers offsets for;
    it was not written again."""

    code = "duplicateSequence"


class TooManyStreamsError(KolkError):
    """A stream past a fair-use limit of the SPU: streams of this connection, of this identity
    (a TLS identity, or the client's address without TLS), or of the whole SPU. The message
    names the limit, the count and whose. Retriable once some of those streams close, so the
    consumer does not retry it by itself: it surfaces at once."""

    code = "tooManyStreams"
    retriable = True


class TooManyConnectionsError(TooManyStreamsError):
    """A connection past its identity's limit on the SPU (the message names it); the SPU
    answers its first request so, then closes it. Surfaces at once, like tooManyStreams."""

    code = "tooManyConnections"


class SmartModuleFailedError(KolkError):
    """A SmartModule of the request's chain failed, or could not start; the message names the
    module, its kind, the reason (docs/smartmodule-abi.md "Errors the host reports") and, when
    the module refused a record, its offset. Not retriable: the same records fail again."""

    code = "smartModule"


class OverloadedError(KolkError):
    """The SPU cannot run this SmartModule chain now: its worker pool's queue, its compiler or
    its SmartModule memory budget is full (the message says which). Retriable later; like
    tooManyStreams it surfaces at once rather than being retried by the client."""

    code = "overloaded"
    retriable = True


class PermissionDeniedError(KolkError):
    """The policy in force does not allow this identity, from this address, to do this."""

    code = "denied"


class NotCoordinatorError(KolkError):
    """This SPU does not coordinate the group (it no longer leads the group's partition of
    ``_consumer_offsets``); ``leader`` names the coordinator when the SPU knows it. The client
    looks the coordinator up again and retries."""

    code = "notCoordinator"
    retriable = True


class CoordinatorLoadingError(KolkError):
    """The group's coordinator is still reading the group's committed offsets after it took
    over; retried by the client."""

    code = "coordinatorLoading"
    retriable = True


class StaleMemberError(KolkError):
    """A group call from a member that is no longer in the group (it left, or missed heartbeats
    for its session timeout and was removed), from an older epoch of the member, or a commit for
    a partition the member does not own. Its commit is refused: a zombie cannot move the
    group's position. The consumer rejoins and is given partitions again."""

    code = "staleMember"


class FencedInstanceError(KolkError):
    """Another process joined the group with this consumer's ``group_instance_id`` and took over
    its partitions (Kafka's FENCED_INSTANCE_ID). The consumer does not rejoin: two processes
    with one instance id would take the partitions from each other forever."""

    code = "fencedInstance"


_BY_CODE: dict[str, type[KolkError]] = {
    "unavailable": ClusterUnavailableError,
    "noLeader": ClusterUnavailableError,
    "notLeader": NotLeaderError,
    "timeout": RequestTimeoutError,
    "invalidArgument": InvalidRequestError,
    "invalidCommand": InvalidRequestError,
    "unknownCommand": InvalidRequestError,
    "tooLarge": InvalidRequestError,
    "replicationFactorTooHigh": ReplicationFactorTooHighError,
    "alreadyExists": AlreadyExistsError,
    "notFound": NotFoundError,
    "versionConflict": VersionConflictError,
    "inUse": InUseError,
    "staleEpoch": StaleEpochError,
    "notPartitionLeader": StaleEpochError,
    "invalidBatch": InvalidBatchError,
    "offsetOutOfRange": OffsetOutOfRangeError,
    "corruptBatch": CorruptDataError,
    "storageFull": StorageFullError,
    "storage": KolkError,
    "notEnoughReplicas": NotEnoughReplicasError,
    "notEnoughReplicasAfterAppend": NotEnoughReplicasAfterAppendError,
    "offline": PartitionOfflineError,
    "producerFenced": ProducerFencedError,
    "outOfOrderSequence": OutOfOrderSequenceError,
    "duplicateSequence": DuplicateSequenceError,
    "denied": PermissionDeniedError,
    "smartModule": SmartModuleFailedError,
    "malformed": InvalidRequestError,
    "unknownCall": InvalidRequestError,
    "limitExceeded": ClusterUnavailableError,
    "tooManyStreams": TooManyStreamsError,
    "tooManyConnections": TooManyConnectionsError,
    "overloaded": OverloadedError,
    "notCoordinator": NotCoordinatorError,
    "coordinatorLoading": CoordinatorLoadingError,
    "staleMember": StaleMemberError,
    "fencedInstance": FencedInstanceError,
    "internal": KolkError,
}


assert set(_BY_CODE) <= {c.value for c in ErrorCode}, set(_BY_CODE) - {c.value for c in ErrorCode}


def one_line(text: str, limit: int = TEXT_CHARS_MAX) -> str:
    """An error message as it may travel: its lines joined with "; ", stopping before a line
    that starts a Python traceback (never sent), at most ``limit`` characters."""
    lines = []
    for line in str(text).splitlines():
        line = line.strip()
        if line.startswith("Traceback ("):
            break
        if line:
            lines.append(line)
    return "; ".join(lines)[:limit] or "(no message)"


def error_from_wire(code: str, message: str, leader: str | None = None, retriable: bool = False) -> KolkError:
    """The exception for a wire error. A code this version does not know is a KolkError that
    is retriable only if the server said so."""
    cls = _BY_CODE.get(code, KolkError)
    return cls(message, code=code, leader=leader, retriable=retriable or cls.retriable)
