"""RabbitMQ backend over aio-pika.

Seed style: wire the aio-pika objects you declared yourself::

    listener = EventListener(RabbitMQConsumer(queue))
    emitter = EventEmitter(RabbitMQProducer(exchange))

App style: ``App("amqp://user:pass@host:5672/vhost", group="billing")`` builds a
:class:`RabbitMQBackend`, which declares a durable topic exchange, one durable queue per group
and dead-letter queues (see its docstring for the options). The event's topic is the AMQP
routing key, and topic segments are separated by ``.``.
"""

try:
    import aio_pika  # noqa: F401
except ImportError:  # pragma: no cover - exercised only without the extra
    from dispytch.errors import MissingExtraError

    raise MissingExtraError("rabbitmq", "aio-pika") from None

from dispytch.rabbitmq.backend import RabbitMQBackend
from dispytch.rabbitmq.config import RabbitMQEventConfig
from dispytch.rabbitmq.consumer import RabbitMQConsumer
from dispytch.rabbitmq.dead_letters import DEFAULT_DEAD_LETTER_EXCHANGE, DeadLetterStore
from dispytch.rabbitmq.producer import RabbitMQProducer

__all__ = [
    "DEFAULT_DEAD_LETTER_EXCHANGE",
    "DeadLetterStore",
    "RabbitMQBackend",
    "RabbitMQConsumer",
    "RabbitMQEventConfig",
    "RabbitMQProducer",
]
