"""NATS JetStream backend over nats-py.

Seed style: wire the JetStream objects you created yourself::

    nc = await nats.connect("nats://localhost:4222")
    js = nc.jetstream()
    sub = await js.pull_subscribe("orders.*", durable="billing", stream="ORDERS")
    listener = EventListener(NATSConsumer(sub, dead_letters=DeadLetterStore(js)),
                             topic_delimiter=".")
    emitter = EventEmitter(NATSProducer(js))

App style: ``App("nats://host:4222", group="billing")`` builds a :class:`NATSBackend`, which
manages a stream, one durable pull consumer per group and handler subject, and a dead-letter
stream (see its docstring). The event's topic is the NATS subject; segments are separated
by ``.``.
"""

try:
    import nats  # noqa: F401
except ImportError:  # pragma: no cover - exercised only without the extra
    from dispytch.errors import MissingExtraError

    raise MissingExtraError("nats", "nats-py") from None

from dispytch.nats.backend import NATSBackend
from dispytch.nats.config import NATSEventConfig
from dispytch.nats.consumer import NATSConsumer, NATSGroupConsumer
from dispytch.nats.dead_letters import DEFAULT_DEAD_LETTER_STREAM, DeadLetterStore
from dispytch.nats.producer import NATSProducer

__all__ = [
    "DEFAULT_DEAD_LETTER_STREAM",
    "DeadLetterStore",
    "NATSBackend",
    "NATSConsumer",
    "NATSEventConfig",
    "NATSGroupConsumer",
    "NATSProducer",
]
