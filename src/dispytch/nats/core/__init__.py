"""Core NATS backend (no JetStream): at-most-once, like Redis Pub/Sub.

Seed style::

    nc = await nats.connect("nats://localhost:4222")
    listener = EventListener(NATSCoreConsumer(nc, queue="billing"), topic_delimiter=".")
    emitter = EventEmitter(NATSCoreProducer(nc))

App style: ``App("nats+core://host:4222", group="billing")`` builds a
:class:`NATSCoreBackend`. For at-least-once delivery use ``nats://`` (JetStream).
"""

from dispytch.nats.core.backend import NATSCoreBackend
from dispytch.nats.core.consumer import NATSCoreConsumer
from dispytch.nats.core.producer import NATSCoreProducer

__all__ = ["NATSCoreBackend", "NATSCoreConsumer", "NATSCoreProducer"]
