"""Kafka backend over aiokafka (``pip install "dispytch[kafka]"``).

Seed style, with clients you built::

    from dispytch.kafka import KafkaConsumer, KafkaProducer, KafkaEventConfig

    listener = EventListener(KafkaConsumer(aiokafka_consumer))
    emitter = EventEmitter(KafkaProducer(aiokafka_producer))

or let an app build them: ``App("kafka://127.0.0.1:9092", group="billing")``
(see :class:`KafkaBackend`).
"""

try:
    import aiokafka  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    from dispytch.errors import MissingExtraError

    raise MissingExtraError("kafka", "aiokafka") from exc

from dispytch.kafka.backend import KafkaBackend
from dispytch.kafka.config import KafkaEventConfig
from dispytch.kafka.consumer import KafkaConsumer, KafkaFetchError
from dispytch.kafka.dead_letters import KafkaDeadLetters
from dispytch.kafka.offsets import OffsetTracker
from dispytch.kafka.producer import KafkaProducer

__all__ = [
    "KafkaBackend",
    "KafkaConsumer",
    "KafkaDeadLetters",
    "KafkaEventConfig",
    "KafkaFetchError",
    "KafkaProducer",
    "OffsetTracker",
]
