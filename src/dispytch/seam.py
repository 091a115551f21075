"""The backend seam: everything a broker backend implements, in one module.

A backend is three objects:

* a :class:`Consumer` yields :class:`Message` objects from :meth:`Consumer.listen` and settles
  each one the listener hands back: :meth:`~Consumer.ack` after success,
  :meth:`~Consumer.dead_letter` for a permanent failure (described by a :class:`Failure`),
  :meth:`~Consumer.nack` when the process stops before the work was done. A consumer that
  implements only ``listen`` and ``ack`` still works.
* a :class:`Producer` sends bytes and returns only once the broker confirmed them
  (:meth:`Producer.send`, :meth:`Producer.send_many` for a batch of :class:`Outgoing`), else
  raises (:class:`ProducerTimeout` for a timeout).
* a :class:`Backend` builds both from a URL for an :class:`~dispytch.app.App` and owns their
  life: connect once, one producer, the consumers it built, closed consumers first.

Everything else (routing, decoding, retries, dead-letter policy, ordering, middleware) lives
once in the core. The 0.10 paths (``dispytch.listener.consumer``, ``dispytch.emitter.producer``,
``dispytch.backend``) re-export these names. ``docs/backends/custom.md`` walks through a
complete backend.
"""

from __future__ import annotations

import asyncio
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeVar

from pydantic import BaseModel

from dispytch import allocator
from dispytch.dead_letter import DeadLetter
from dispytch.errors import ConfigurationError, EmitError
from dispytch.redaction import redact, secrets_of
from dispytch.topic_rules import GENERIC, TopicRules

if TYPE_CHECKING:
    from dispytch.dlq.store import DeadLetterStore
    from dispytch.poison import Undecodable
    from dispytch.request import ReplyInbox
    from dispytch.routing import TopicPattern
    from dispytch.security import ConnectionSecurity

T = TypeVar("T")

__all__ = [
    "DEAD_LETTER_REASONS",
    "FAILURE_HEADER_PREFIX",
    "FORWARDED_HEADER_PREFIX",
    "Backend",
    "Consumer",
    "Failure",
    "Message",
    "Outgoing",
    "Producer",
    "ProducerTimeout",
    "Retried",
    "RetryLater",
]


# -- the consumer half ---------------------------------------------------------------------------


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
    #: Set by the adapter when part of the delivery's broker metadata could not be decoded (a
    #: topic, key or header name that is not UTF-8...): no handler can be chosen for it, so the
    #: listener dead-letters it at once (reason ``decode``) through the same chain as any
    #: failure. ``topic`` then holds the topic as well as it could be shown.
    undecodable: Undecodable | None = None

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
#: Every value of a dead letter's ``x-dispytch-reason`` header (:attr:`Failure.reason`).
DEAD_LETTER_REASONS = ("decode", "validation", "handler", "redelivery", "middleware")


@dataclass(slots=True, frozen=True)
class Failure:
    """Why a message is being dead-lettered."""

    reason: str  # one of DEAD_LETTER_REASONS
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
    #: Whether :meth:`ack` does anything; ``False`` for a broker without acknowledgements (core
    #: NATS, Redis Pub/Sub): the listener then does not call it after a success.
    acks: ClassVar[bool] = True

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

    async def lag(self) -> Mapping[str, int] | None:
        """How many messages wait in the broker for this consumer, per topic, stream or queue.

        Called every few seconds by the app's health checks (never per message); what it
        returns becomes the ``lag`` of :meth:`App.health() <dispytch.app.App.health>` and the
        ``dispytch_consumer_lag`` metric. It must ask the broker: raising (or not returning
        within the check's timeout) means the broker cannot be reached. ``None`` (the default)
        means the broker keeps no backlog for this consumer, or this consumer cannot tell.
        """
        return None


# -- the producer half ---------------------------------------------------------------------------


class ProducerTimeout(EmitError, TimeoutError):
    """The broker did not confirm an event in time. The event may or may not have been stored."""


class Outgoing(NamedTuple):
    """One message for :meth:`Producer.send_many` (a named tuple: built once per emitted event,
    it must cost next to nothing)."""

    topic: str
    payload: bytes
    config: BaseModel | None = None
    key: bytes | None = None
    headers: Mapping[str, str] | None = None


class Producer(ABC):
    """Sends bytes to a destination and returns only once the broker confirmed them.

    ``send`` must raise when the broker refused or did not confirm the message
    (:class:`ProducerTimeout` for a timeout), never return silently.

    ``topic_rules`` says what a topic placeholder value may hold on this broker; the emitter
    checks every value against it before calling ``send``.

    How the emitter calls ``send`` (read from its signature once, when the emitter is built):
    ``topic=``, ``payload=`` and ``config=`` as keywords, as Dispytch 0.10 did, so a 0.10
    producer taking them keyword-only (or in another order) works; positionally, in that
    order, when ``send`` does not take those names by keyword (positional-only parameters) or
    has this class's signature (the same call, made directly). ``key=`` and ``headers=`` are
    passed by keyword only when ``send`` takes them (or ``**kwargs``).
    """

    topic_rules: ClassVar[TopicRules] = GENERIC
    #: Replies (request/reply) are sent only to addresses starting with this: a request's
    #: reply-to header cannot make a service publish into one of its event topics.
    reply_prefix: ClassVar[str] = "dispytch.reply."

    @abstractmethod
    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None: ...

    async def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Send several messages, pipelined; return once each was confirmed or failed.

        The result has one entry per message: ``None`` when confirmed, else the error. The
        default runs :meth:`send` concurrently; a backend overrides it when its client can
        enqueue a batch more cheaply than one coroutine per message.
        """
        results = await asyncio.gather(
            *(
                self.send(m.topic, m.payload, m.config, headers=m.headers, key=m.key)
                for m in messages
            ),
            return_exceptions=True,
        )
        return [r if isinstance(r, BaseException) else None for r in results]

    async def send_reply(self, address: str, payload: bytes, headers: Mapping[str, str]) -> None:
        """Send a reply to the reply inbox at ``address`` (see :mod:`dispytch.request`); return
        once the broker took it. The default sends it like an event, to the topic ``address``;
        a backend whose inboxes are not topics (NATS inbox subjects) overrides it."""
        await self.send(address, payload, headers=headers)

    async def close(self) -> None:
        """Release what the producer owns. The default owns nothing."""


# -- the backend ----------------------------------------------------------------------------------


class Backend(ABC):
    """Builds and owns the clients of one broker: one producer, and the consumers it made.

    The base owns the life cycle, so a backend only fills in what is its own:

    * :meth:`open_connections`: connect (called once by :meth:`connect`);
    * :meth:`producer`: the producer for emits and dead letters;
    * :meth:`make_consumer`: a new consumer for one group (:meth:`consumer` remembers it);
    * :meth:`close_connections`: release the producer and connections (called by
      :meth:`close` after every consumer was closed).

    :meth:`connect` runs once (a second call returns at once; concurrent calls wait for the
    first); :meth:`close` closes the consumers first (they may still settle messages through
    the producer's connection), then the connections, and may be called any number of times.
    Secrets of the URL and options are kept in :attr:`secrets` and scrubbed by :meth:`redact`
    and from ``repr``.
    """

    #: Delimiter of topic segments on this broker, e.g. ``.`` for AMQP routing keys.
    topic_delimiter: ClassVar[str] = ":"
    #: What a topic placeholder value may hold on this broker (checked on emit and consume).
    topic_rules: ClassVar[TopicRules] = GENERIC
    #: TLS, credentials and timeouts of the connection, for backends that use
    #: :func:`dispytch.security.connection_security` (its secrets are scrubbed too, and
    #: :meth:`connect` keeps them out of the client's logs).
    security: ConnectionSecurity | None = None

    def __init__(
        self, url: str, *, security: ConnectionSecurity | None = None, **options: Any
    ) -> None:
        self.url = url
        self.options = options
        if security is not None:
            self.security = security
        #: Secret values of the URL and the options, kept out of everything shown.
        self.secrets: frozenset[str] = secrets_of(url, options)
        if self.security is not None:
            self.secrets |= self.security.secrets
        self._consumers: list[Consumer] = []
        self._connected = False
        self._connecting = asyncio.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.url, self.secrets)!r})"

    def redact(self, text: str) -> str:
        """``text`` with this backend's secrets (and those of any URL in it) replaced."""
        return redact(text, self.secrets)

    # -- life cycle ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether :meth:`connect` succeeded (and :meth:`close` was not called since)."""
        return self._connected

    async def connect(self) -> None:
        """Open the connections (:meth:`open_connections`) once; called by the app before
        anything else. Later calls return at once; after :meth:`close` it connects again."""
        if self._connected:
            return
        async with self._connecting:
            if self._connected:
                return
            if self.security is not None:
                self.security.before_connect()
            allocator.prime()
            await self.open_connections()
            self._connected = True

    async def open_connections(self) -> None:
        """Connect to the broker and build what :meth:`producer` returns. The default does
        nothing (a backend whose clients connect on first use). On an error, release what was
        opened before raising: :meth:`connect` may be called again."""

    def require(self, built: T | None) -> T:
        """``built`` (something :meth:`open_connections` made), or the error that says to
        connect first."""
        if built is None or not self._connected:
            raise ConfigurationError(
                f"{self!r} is not connected; call 'await backend.connect()' (App.start does)"
            )
        return built

    @abstractmethod
    def producer(self) -> Producer:
        """The producer used for emits and dead letters (built once, owned by the backend)."""

    def consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> Consumer:
        """A new consumer in consumer group ``group`` that fetches at most ``prefetch`` ahead
        (and about ``max_buffer_bytes`` payload bytes); :meth:`close` closes it."""
        consumer = self.make_consumer(group, prefetch=prefetch, max_buffer_bytes=max_buffer_bytes)
        self._consumers.append(consumer)
        return consumer

    @abstractmethod
    def make_consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> Consumer:
        """Build the consumer :meth:`consumer` hands out."""

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        """The consumers made and not closed yet, oldest first."""
        return tuple(self._consumers)

    async def close(self) -> None:
        """Close every consumer (each one even if another fails), then the producer and the
        connections (:meth:`close_connections`). Idempotent; raises the first error after
        everything was closed."""
        consumers, self._consumers = self._consumers, []
        errors: list[BaseException] = []
        for consumer in consumers:
            try:
                await consumer.close()
            except Exception as exc:
                errors.append(exc)
        try:
            await self.close_connections()
        finally:
            self._connected = False
        if errors:
            raise errors[0]

    async def close_connections(self) -> None:
        """Release the producer and the connections; called by :meth:`close` (also when
        :meth:`connect` never ran, and again after an earlier close: release only what is
        open). The default does nothing."""

    def reply_inbox(self, group: str) -> ReplyInbox:
        """A new private inbox for the replies to one app's requests (see
        :mod:`dispytch.request`); ``group`` is the app's group.

        The default reads the topic ``<reply_prefix><random>`` with a consumer of its own
        (right for a broker that makes topics on the fly and forgets them, like memory); a
        backend overrides it with its broker's own kind of private destination.
        """
        from dispytch.request import ConsumerInbox

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
