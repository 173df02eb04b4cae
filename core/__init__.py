"""Kolk: a programmable streaming platform in Python.

``kolk.Client`` (and ``kolk.AsyncClient``) is the entry point: produce, consume, administer.
Errors derive from ``kolk.KolkError``.
"""

from .client import AsyncClient as AsyncClient
from .client import Client as Client
from .consumer import ConsumerRecord as ConsumerRecord
from .consumer import Offset as Offset
from .errors import KolkError as KolkError
from .errors import NotFoundError as NotFoundError
from .errors import NotEnoughReplicasAfterAppendError as NotEnoughReplicasAfterAppendError
from .errors import NotLeaderError as NotLeaderError
from .errors import PartitionOfflineError as PartitionOfflineError
from .producer import RecordMetadata as RecordMetadata

__version__ = "0.1.0"
