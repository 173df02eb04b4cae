"""Kolk: a programmable streaming platform in Python.

``kolk.Client`` (and ``kolk.AsyncClient``) is the entry point: produce, consume, administer.
Errors derive from ``kolk.KolkError``; ``error.retriable`` says whether the same call may
succeed later, ``error.outcome_unknown`` whether a write may have happened although it failed.
"""

from .client.client import AsyncClient as AsyncClient
from .client.client import Client as Client
from .client.client import Consumer as Consumer
from .client.client import Producer as Producer
from .client.consumer import AsyncConsumer as AsyncConsumer
from .client.consumer import ConsumerRecord as ConsumerRecord
from .client.consumer import Offset as Offset
from .client.consumer import RecordBatch as RecordBatch
from .client.group_consumer import AsyncGroupConsumer as AsyncGroupConsumer
from .client.group_consumer_sync import GroupConsumer as GroupConsumer
from .client.group_core import AssignmentChange as AssignmentChange
from .groups.names import TopicPartition as TopicPartition
from .protocol.errors import ClusterUnavailableError as ClusterUnavailableError
from .protocol.errors import InvalidRequestError as InvalidRequestError
from .protocol.errors import KolkError as KolkError
from .protocol.errors import NotEnoughReplicasAfterAppendError as NotEnoughReplicasAfterAppendError
from .protocol.errors import NotFoundError as NotFoundError
from .protocol.errors import NotLeaderError as NotLeaderError
from .protocol.errors import OffsetOutOfRangeError as OffsetOutOfRangeError
from .protocol.errors import PartitionOfflineError as PartitionOfflineError
from .protocol.errors import RequestTimeoutError as RequestTimeoutError
from .protocol.errors import StaleMemberError as StaleMemberError
from .protocol.errors import FencedInstanceError as FencedInstanceError
from .client.producer import AsyncProducer as AsyncProducer
from .client.producer import RecordFuture as RecordFuture
from .client.producer import RecordMetadata as RecordMetadata
from .security.tls import TlsConfig as TlsConfig

__version__ = "0.1.0"
