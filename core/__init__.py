"""Kolk: a programmable streaming platform in Python.

``kolk.Client`` (and ``kolk.AsyncClient``) is the entry point: produce, consume, administer.
Errors derive from ``kolk.KolkError``; ``error.retriable`` says whether the same call may
succeed later, ``error.outcome_unknown`` whether a write may have happened although it failed.
"""

from .client import AsyncClient as AsyncClient
from .client import Client as Client
from .client import Consumer as Consumer
from .client import Producer as Producer
from .consumer import AsyncConsumer as AsyncConsumer
from .consumer import ConsumerRecord as ConsumerRecord
from .consumer import Offset as Offset
from .consumer import RecordBatch as RecordBatch
from .errors import ClusterUnavailableError as ClusterUnavailableError
from .errors import InvalidRequestError as InvalidRequestError
from .errors import KolkError as KolkError
from .errors import NotEnoughReplicasAfterAppendError as NotEnoughReplicasAfterAppendError
from .errors import NotFoundError as NotFoundError
from .errors import NotLeaderError as NotLeaderError
from .errors import OffsetOutOfRangeError as OffsetOutOfRangeError
from .errors import PartitionOfflineError as PartitionOfflineError
from .errors import RequestTimeoutError as RequestTimeoutError
from .producer import AsyncProducer as AsyncProducer
from .producer import RecordFuture as RecordFuture
from .producer import RecordMetadata as RecordMetadata
from .security.tls import TlsConfig as TlsConfig

__version__ = "0.1.0"
