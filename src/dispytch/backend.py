"""Backends built from a broker URL, for :class:`~dispytch.app.App`.

A backend owns the clients it builds: one producer, and one consumer per listener group.
Backends are found by URL scheme and imported only when used, so ``import dispytch`` needs no
broker client installed.
"""

from __future__ import annotations

import importlib
import uuid
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from dispytch.dead_letter import DeadLetter
from dispytch.emitter.producer import Producer
from dispytch.errors import ConfigurationError
from dispytch.listener.consumer import Consumer
from dispytch.redaction import redact, redact_url, secrets_of
from dispytch.request import ConsumerInbox, ReplyInbox
from dispytch.topic_rules import GENERIC, TopicRules

if TYPE_CHECKING:
    from dispytch.dlq.store import DeadLetterStore

__all__ = ["Backend", "backend_from_url", "redact_url", "register_backend"]

#: scheme -> "module:attribute"; modules are imported on first use.
_BACKENDS: dict[str, str] = {
    "memory": "dispytch.memory:MemoryBackend",
    "kafka": "dispytch.kafka:KafkaBackend",
    "amqp": "dispytch.rabbitmq:RabbitMQBackend",
    "amqps": "dispytch.rabbitmq:RabbitMQBackend",
    "redis": "dispytch.redis:RedisBackend",
    "rediss": "dispytch.redis:RedisBackend",
    "redis+streams": "dispytch.redis.streams:RedisStreamsBackend",
    "rediss+streams": "dispytch.redis.streams:RedisStreamsBackend",
    "nats": "dispytch.nats:NATSBackend",
    "tls": "dispytch.nats:NATSBackend",
    "nats+tls": "dispytch.nats:NATSBackend",
    "nats+core": "dispytch.nats.core:NATSCoreBackend",
    "nats+core+tls": "dispytch.nats.core:NATSCoreBackend",
    "kafka+ssl": "dispytch.kafka:KafkaBackend",
}


def register_backend(scheme: str, target: str) -> None:
    """Make ``scheme://`` URLs build the backend at ``"module:Class"``."""
    _BACKENDS[scheme] = target


class Backend(ABC):
    """Builds and owns the clients of one broker."""

    #: Delimiter of topic segments on this broker, e.g. ``.`` for AMQP routing keys.
    topic_delimiter: ClassVar[str] = ":"
    #: What a topic placeholder value may hold on this broker (checked on emit and consume).
    topic_rules: ClassVar[TopicRules] = GENERIC

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options
        #: Secret values of the URL and the options, kept out of everything shown.
        self.secrets: frozenset[str] = secrets_of(url, options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.url)!r})"

    def redact(self, text: str) -> str:
        """``text`` with this backend's secrets (and those of any URL in it) replaced."""
        return redact(text, self.secrets)

    async def connect(self) -> None:
        """Open connections; called once by the app before anything else."""

    @abstractmethod
    def producer(self) -> Producer:
        """The producer used for emits and dead letters (built once, owned by the backend)."""

    @abstractmethod
    def consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> Consumer:
        """A new consumer in consumer group ``group`` that fetches at most ``prefetch`` ahead."""

    async def close(self) -> None:
        """Close everything the backend opened."""

    def reply_inbox(self, group: str) -> ReplyInbox:
        """A new private inbox for the replies to one app's requests (see
        :mod:`dispytch.request`); ``group`` is the app's group.

        The default reads the topic ``<reply_prefix><random>`` with a consumer of its own
        (right for a broker that makes topics on the fly and forgets them, like memory); a
        backend overrides it with its broker's own kind of private destination.
        """
        address = self.producer().reply_prefix + uuid.uuid4().hex
        return ConsumerInbox(self, address, self.topic_delimiter)

    async def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        """Read (without removing) up to ``limit`` dead letters of ``topic``, oldest first."""
        raise NotImplementedError(f"{type(self).__name__} cannot read dead letters back yet")

    def dead_letter_store(self, group: str | None = None) -> DeadLetterStore:
        """The dead letters of this backend as a :class:`~dispytch.dlq.DeadLetterStore` (list,
        read, replay, purge), for consumer group ``group`` where the layout has one dead-letter
        destination per group, and reading every group's fallback destination when ``None``.
        Call :meth:`connect` first."""
        raise ConfigurationError(
            f"{type(self).__name__} has no dead-letter store: dispytch dlq works with kafka://, "
            "amqp://, redis+streams:// (and redis://), nats:// and memory://"
        )


def backend_from_url(url: str, **options: Any) -> Backend:
    """Build the backend for ``url`` (``kafka://``, ``amqp://``, ``redis://``, ``memory://``...)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    target = _BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(_BACKENDS))
        raise ConfigurationError(
            f"unknown broker URL {redact(url, secrets_of(url, options))!r}; use one of: {known}"
        )
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Backend] = getattr(module, attr)
    return cls(url, **options)
