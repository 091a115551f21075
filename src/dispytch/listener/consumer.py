"""The consumer half of the backend seam.

A backend yields :class:`Message` objects from :meth:`Consumer.listen` and settles each one the
listener hands back: :meth:`~Consumer.ack` after success, :meth:`~Consumer.dead_letter` for a
permanent failure, :meth:`~Consumer.nack` when the process stops before the work was done.
A consumer that implements only ``listen`` and ``ack`` still works.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from dispytch.emitter.producer import Outgoing
    from dispytch.routing import TopicPattern

__all__ = ["FORWARDED_HEADER_PREFIX", "Consumer", "Failure", "Message", "Retried", "RetryLater"]


@dataclass(slots=True, frozen=True)
class Retried:
    """What a broker-delayed retry says about itself (``Message.retry``).

    Attributes:
        handler: the handler to run (``None``: every matching handler).
        attempt: which attempt this delivery is (2 for the first retry); read from a header
            anyone who can publish could forge, so the listener clamps it to the policy's
            attempts.
        counted: the broker's delivery count includes the retries (JetStream's ``nak`` with a
            delay), so the redelivery guard allows for them.
    """

    handler: str | None
    attempt: int
    counted: bool = False


@dataclass(slots=True, frozen=True)
class RetryLater:
    """A handler failure to retry through the broker: run ``handler`` again as attempt
    ``attempt``, ``delay`` seconds from now."""

    handler: str
    attempt: int
    delay: float


@dataclass(slots=True)
class Message:
    """One delivery from a broker."""

    topic: str
    payload: bytes
    #: Ordering key: messages sharing a key are handled one at a time, in arrival order.
    key: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: 1 for the first delivery; brokers that count redeliveries report more.
    delivery_attempt: int = 1
    partition: int | None = None
    offset: int | None = None
    #: Backend-private handle (the client's own message object).
    extra: Any = None
    #: The id the broker gives the message, where it has one (see :attr:`id`).
    message_id: str | None = None
    #: Set on a broker-delayed retry (see :meth:`Consumer.retry_later`).
    retry: Retried | None = None

    @property
    def id(self) -> str:
        """The message's id: the broker's where it has one (RabbitMQ's ``message_id`` property,
        the Redis Streams entry id, the JetStream ``Nats-Msg-Id`` header), else a random UUID
        made when first read, as 0.10 gave every message. A consumer that builds its own
        messages (as 0.10's did) may key the ones it handed out by it."""
        if self.message_id is None:
            self.message_id = str(uuid.uuid4())
        return self.message_id


#: Prefix of the headers Dispytch writes into a dead letter.
FAILURE_HEADER_PREFIX = "x-dispytch-"
#: What an incoming ``x-dispytch-*`` header is renamed to in a dead letter, so that a publisher
#: cannot forge the failure headers Dispytch writes (``x-dispytch-reason`` arrives as
#: ``x-dispytch-forwarded-reason``). Headers already under this prefix are kept as they are.
FORWARDED_HEADER_PREFIX = "x-dispytch-forwarded-"


@dataclass(slots=True, frozen=True)
class Failure:
    """Why a message is being dead-lettered."""

    reason: str  # "decode", "validation", "handler", "redelivery" or "middleware"
    error_type: str
    error_message: str
    handler: str | None
    attempts: int
    failed_at_ms: int
    #: the exception behind the failure, when there is one (not written to the dead letter)
    error: BaseException | None = field(default=None, compare=False, repr=False)

    def headers(self, message: Message) -> dict[str, str]:
        """The dead letter's headers: the message's own, then the ones that describe this
        failure and the message's origin.

        An incoming header named ``x-dispytch-...`` (any case) is kept renamed to
        ``x-dispytch-forwarded-...`` (it wins over an incoming ``x-dispytch-forwarded-...`` of
        the same name): only Dispytch writes the failure headers.
        """
        out: dict[str, str] = {}
        for name, value in message.headers.items():
            lowered = name.lower()
            if not lowered.startswith(FAILURE_HEADER_PREFIX):
                out[name] = value
            elif lowered.startswith(FORWARDED_HEADER_PREFIX):
                out.setdefault(name, value)  # an older forwarded one yields to a newer one
            else:
                out[FORWARDED_HEADER_PREFIX + name[len(FAILURE_HEADER_PREFIX) :]] = value
        out["x-dispytch-reason"] = self.reason
        out["x-dispytch-error-type"] = self.error_type
        out["x-dispytch-error-message"] = self.error_message[:2048]
        out["x-dispytch-attempts"] = str(self.attempts)
        out["x-dispytch-original-topic"] = message.topic
        out["x-dispytch-failed-at"] = str(self.failed_at_ms)
        if self.handler is not None:
            out["x-dispytch-handler"] = self.handler
        if message.partition is not None:
            out["x-dispytch-original-partition"] = str(message.partition)
        if message.offset is not None:
            out["x-dispytch-original-offset"] = str(message.offset)
        return out


class Consumer(ABC):
    """Where messages come from and how they are settled."""

    #: A consumer that publishes what a message's handlers return atomically with the
    #: message's acknowledgement (Kafka's transactional mode) sets this to a coroutine
    #: function taking ``(message, outgoing)``, called before the ack; ``None`` (the default):
    #: the listener's emitter sends them, confirmed, before the ack.
    stage_outputs: Callable[[Message, list[Outgoing]], Awaitable[None]] | None = None
    #: Whether :meth:`retry_later` works (``retry_mode="broker"`` handlers need it).
    supports_broker_retries: ClassVar[bool] = False

    @abstractmethod
    def listen(self) -> AsyncIterator[Message]:
        """Yield messages until the consumer is closed."""

    @abstractmethod
    async def ack(self, message: Message) -> None:
        """The message was handled (or dead-lettered); the broker may forget it."""

    async def nack(self, message: Message) -> None:
        """The process is stopping before the message was handled: hand it back for redelivery.

        The default leaves the message unacknowledged; the broker redelivers it when the
        connection closes.
        """

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        """Store the message's original bytes in a dead-letter destination.

        Return ``True`` when it was stored (the listener then acks the message) and ``False`` when
        this consumer has no dead-letter destination (the listener then uses its own, if set).
        """
        return False

    async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool:
        """Store the message in this consumer's fixed fallback destination (one per group,
        the original topic in the ``x-dispytch-original-topic`` header).

        The listener calls it only after :meth:`dead_letter` kept failing. Return ``True`` when
        stored; ``False`` (the default) means there is no fallback and the listener stops
        loudly instead of acknowledging the message.
        """
        return False

    def use_broker_retries(self, delays: Sequence[float] = ()) -> None:
        """Get ready for :meth:`retry_later` (called before :meth:`start` when a handler
        retries through the broker): subscribe to the retry destination, say. ``delays`` are
        the delays (seconds, before jitter) the handlers' policies may ask for."""

    async def retry_later(self, message: Message, retries: Sequence[RetryLater]) -> None:
        """Have ``message`` delivered again after a delay, once per :class:`RetryLater` (or,
        on a broker that redelivers the message itself, once after the shortest delay), then
        settle it: the listener acknowledges nothing more for it. The delayed copy says which
        handler it is for and which attempt it is, and comes back with ``Message.retry`` set.
        Raise when the broker did not confirm the delayed copy (the listener then hands the
        message back)."""
        raise NotImplementedError(f"{type(self).__name__} has no broker-delayed retries")

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        """Subscribe to what the registered handlers need, before :meth:`listen`.

        Each :class:`~dispytch.routing.TopicPattern` is a literal topic or a pattern with
        segments; it offers ``.glob`` and ``.regex`` forms for brokers that match themselves.
        The default does nothing: a seed-style consumer was subscribed by its user.
        """

    async def close(self) -> None:
        """Stop fetching and release the connection; unsettled messages go back to the broker."""
