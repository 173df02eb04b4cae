"""The client room: what an application links against.

``client.py`` (``Client``, ``AsyncClient``), ``producer.py``, ``consumer.py``, ``admin.py``
(the SC client) and ``profile.py`` (the local cluster's profile, for defaults). It stands on
``kolk.protocol`` and ``kolk.transport`` and imports nothing of the servers (``kolk.sc``,
``kolk.spu``, ``kolk.node``) or of the command line (``kolk.cli``).
"""

from .client import AsyncClient as AsyncClient
from .client import Client as Client
from .consumer import AsyncConsumer as AsyncConsumer
from .consumer import Offset as Offset
from .producer import AsyncProducer as AsyncProducer
