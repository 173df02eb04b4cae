"""``kolk.errors``: the errors a Kolk client sees. They are defined in core/protocol/errors.py,
shared with the servers; this module keeps them importable by the name programs already use."""

from .protocol.errors import (  # noqa: F401
    KolkError as KolkError,
    ClusterUnavailableError as ClusterUnavailableError,
    NotLeaderError as NotLeaderError,
    RequestTimeoutError as RequestTimeoutError,
    PartitionOfflineError as PartitionOfflineError,
    InvalidRequestError as InvalidRequestError,
    ReplicationFactorTooHighError as ReplicationFactorTooHighError,
    InvalidBatchError as InvalidBatchError,
    OffsetOutOfRangeError as OffsetOutOfRangeError,
    CorruptDataError as CorruptDataError,
    StorageFullError as StorageFullError,
    NotEnoughReplicasError as NotEnoughReplicasError,
    NotEnoughReplicasAfterAppendError as NotEnoughReplicasAfterAppendError,
    AlreadyExistsError as AlreadyExistsError,
    NotFoundError as NotFoundError,
    VersionConflictError as VersionConflictError,
    InUseError as InUseError,
    StaleEpochError as StaleEpochError,
    ProducerFencedError as ProducerFencedError,
    OutOfOrderSequenceError as OutOfOrderSequenceError,
    DuplicateSequenceError as DuplicateSequenceError,
    PermissionDeniedError as PermissionDeniedError,
    error_from_wire as error_from_wire,
)
from .client.profile import LocalClusterStoppedError as LocalClusterStoppedError  # noqa: F401
