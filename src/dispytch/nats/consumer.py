"""Consumers: one over pull subscriptions the user made (seed style), one that owns a group's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from dispytch.backoff import Backoff
from dispytch.errors import ConfigurationError, SubscriptionLostError
from dispytch.listener.consumer import Consumer, Failure, Message, Retried, RetryLater
from dispytch.nats import _compat
from dispytch.nats.dead_letters import DeadLetterStore
from dispytch.nats.lag import jetstream_lag
from dispytch.nats.streams import stream_for
from dispytch.nats.subjects import consumer_name, covers, overlaps
from dispytch.nats.wire import to_message
from dispytch.routing import TopicPattern
from dispytch.untrusted import loggable

__all__ = ["NATSConsumer", "NATSGroupConsumer"]

logger = logging.getLogger("dispytch.nats")

PullSubscription = JetStreamContext.PullSubscription

#: Seconds between fetch attempts after an error, doubling up to the cap (with jitter).
_ERROR_BACKOFF = 0.5
_ERROR_BACKOFF_CAP = 15.0
#: JetStream's own default ack_wait, assumed when a subscription's consumer cannot be asked.
_DEFAULT_ACK_WAIT = 30.0
#: Bounds of the in-progress period (a third of the redelivery timeout).
_MIN_PROGRESS_INTERVAL = 0.05
_MAX_PROGRESS_INTERVAL = 10.0
#: Default cap of the payload bytes fetched and not yet settled.
DEFAULT_MAX_BUFFER_BYTES = 64 * 1024 * 1024
# How fast the remembered message size (which sizes the next fetch) forgets a large message.
_SIZE_DECAY = 0.98


@dataclass(slots=True, eq=False)
class _Feed:
    """One pull subscription and its share of the prefetch budget."""

    sub: PullSubscription
    budget: int
    #: subjects of earlier feeds on the same stream that may match this feed's messages too
    shadowed_by: tuple[str, ...] = ()
    inflight: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)


class NATSConsumer(Consumer):
    """Consumes JetStream pull subscriptions you created yourself (seed style)::

        sub = await js.pull_subscribe("orders.*", durable="billing", stream="ORDERS")
        listener = EventListener(NATSConsumer(sub), topic_delimiter=".")

    Each subscription is fetched in batches by a task of its own; at most ``prefetch``
    messages (split evenly between subscriptions, at least one each) are fetched and not yet
    settled, and a subscription asks for more as soon as one of its messages is settled
    (a fetch waits up to ``fetch_timeout`` for messages, so an idle stream is not polled in a
    loop). The topic of a message is its subject; ``delivery_attempt`` is JetStream's
    ``num_delivered`` and ``offset`` the stream sequence.

    Settling: ``ack`` sends ``+ACK``, ``nack`` sends ``-NAK`` (JetStream redelivers at once);
    both are buffered and flushed by nats-py without a round trip each. A message never
    settled (the process died) is redelivered after the consumer's ``ack_wait``. While this
    consumer holds a message (fetched, not yet settled) it tells JetStream every third of
    ``ack_wait`` that the message is in progress (``+WPI``), so a handler running longer than
    ``ack_wait`` keeps its message instead of seeing it delivered again.
    Dead letters go to ``dead_letters`` (a :class:`~dispytch.nats.DeadLetterStore`), under
    the topic's subject or, when that cannot be used, the fallback subject of ``group``;
    without a store the listener's own dead-letter producer is used.

    **Bounded in bytes too**: no fetch starts while the payload bytes held reach
    ``max_buffer_bytes``, and a fetch asks for no more messages than fit in the free bytes at
    the size of the largest recent message (the server's ``max_payload`` before the first).

    **Poison-proof**: a message Dispytch cannot read (a subject that is not UTF-8, a header
    block nats-py cannot parse, an ``x-dispytch-key-b64`` header that is not base64) never
    reaches a handler: it is handed to the listener marked
    :attr:`~dispytch.seam.Message.undecodable`, which dead-letters it (reason ``decode``, the
    raw parts base64 in ``x-dispytch-undecodable*`` headers) and acks it; if no dead-letter
    destination takes it, the listener stops with :class:`~dispytch.errors.DeadLetterError`
    and the message stays unacked. A connection nats-py closed for good (the server refused
    something and closed it) makes :meth:`listen` raise
    :class:`~dispytch.errors.SubscriptionLostError`, so the service stops with an error
    instead of idling.

    Args:
        subscriptions: nats-py pull subscriptions (``js.pull_subscribe(...)``).
        prefetch: how many messages may be fetched and not yet settled.
        fetch_timeout: seconds one fetch waits for messages; also how long :meth:`close`
            may wait for a fetch in progress (a fetch is never cancelled).
        dead_letters: where permanent failures are stored.
        ack_wait: seconds JetStream waits for an ack before redelivering (the consumers'
            ``ack_wait``); held messages are reported in progress every third of it.
            ``None``: read from the subscriptions' consumers (the shortest of their
            ``ack_wait`` and ``backoff``) when fetching starts.
        group: names the fallback dead-letter subject.
        max_buffer_bytes: payload bytes fetched and not yet settled at most (64 MiB by
            default; a single larger message is still fetched alone).
    """

    def __init__(
        self,
        *subscriptions: PullSubscription,
        prefetch: int = 64,
        fetch_timeout: float = 1.0,
        dead_letters: DeadLetterStore | None = None,
        ack_wait: float | None = None,
        group: str = "dispytch",
        max_buffer_bytes: int | None = None,
        connection: NATSClient | None = None,
    ) -> None:
        if prefetch < 1:
            raise ConfigurationError(f"prefetch must be >= 1, got {prefetch}")
        if fetch_timeout <= 0:
            raise ConfigurationError(f"fetch_timeout must be > 0, got {fetch_timeout}")
        if ack_wait is not None and ack_wait <= 0:
            raise ConfigurationError(f"ack_wait must be > 0 seconds, got {ack_wait}")
        if max_buffer_bytes is not None and max_buffer_bytes < 1:
            raise ConfigurationError(f"max_buffer_bytes must be >= 1, got {max_buffer_bytes}")
        self.subscriptions: list[PullSubscription] = list(subscriptions)
        #: The subscriptions' connection (the backend passes it; else read from each).
        self.connection = connection
        self.prefetch = prefetch
        self.fetch_timeout = fetch_timeout
        self.dead_letters = dead_letters
        self.ack_wait = ack_wait
        self.group = group
        self.max_buffer_bytes = max_buffer_bytes or DEFAULT_MAX_BUFFER_BYTES
        #: Payload bytes fetched and not yet settled.
        self.held_bytes = 0
        self._message_size = 0.0  # recent largest payload (0: none fetched yet)
        self._lost: BaseException | None = None
        self._shadows: list[tuple[str, ...]] = []
        self._feeds: list[_Feed] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: deque[tuple[_Feed, Msg]] = deque()
        #: id(msg) -> (msg, its feed) of every message fetched and not yet settled: reported
        #: in progress, and the feed gets its slot back when it is settled.
        self._held: dict[int, tuple[Msg, _Feed]] = {}
        self._progress: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self._closed = asyncio.Event()
        self._closing = False
        self._stopped = 0  # fetch loops that ended
        self._broker_retries = False

    # -- fetching -----------------------------------------------------------------------------

    def _spawn_fetchers(self) -> None:
        if self._tasks or self._closing:
            return
        if not self.subscriptions:
            raise ConfigurationError(
                "NATSConsumer has no subscription to fetch from: pass nats-py pull "
                "subscriptions, e.g. NATSConsumer(await js.pull_subscribe('orders', durable="
                "'billing'))"
            )
        budget = max(1, self.prefetch // len(self.subscriptions))
        for i, sub in enumerate(self.subscriptions):
            connection = self.connection or _compat.connection_of(sub)
            if connection is not None:
                _compat.harden(connection)
                if not self._message_size:
                    self._message_size = float(connection.max_payload)
            shadows = self._shadows[i] if i < len(self._shadows) else ()
            feed = _Feed(sub, budget, shadows)
            self._feeds.append(feed)
            self._tasks.append(
                asyncio.create_task(self._fetch_loop(feed), name=f"dispytch-nats-fetch-{i}")
            )
        self._progress = asyncio.create_task(self._progress_loop(), name="dispytch-nats-progress")

    async def _fetch_loop(self, feed: _Feed) -> None:
        try:
            await self._fetch_until_closed(feed)
        finally:
            self._stopped += 1
            self._wakeup.set()

    async def _fetch_until_closed(self, feed: _Feed) -> None:
        backoff = Backoff(_ERROR_BACKOFF, _ERROR_BACKOFF_CAP)
        sub = feed.sub
        held = self._held
        while not self._closing:
            room = feed.budget - feed.inflight
            free_bytes = self.max_buffer_bytes - self.held_bytes
            if room <= 0 or (free_bytes <= 0 and held):
                feed.room.clear()
                await feed.room.wait()
                continue
            if self._message_size:
                # No more than fit in the free bytes at the recent largest size (at least one).
                room = min(room, max(1, int(free_bytes / self._message_size)))
            else:  # the server's max_payload is unknown: one message tells a size first
                room = 1
            try:
                # Whatever room there is, even one slot: a fetch returns what is available at
                # once and otherwise waits up to fetch_timeout, so this never spins.
                msgs = await sub.fetch(room, timeout=self.fetch_timeout)
            except TimeoutError:
                # Nothing new (or reconnecting): ask again. nats-py raises its own
                # TimeoutError, or asyncio's from deep inside a multi-message fetch.
                continue
            except nats.errors.ConnectionClosedError:
                # Closed for good: a lost connection is "reconnecting", not closed.
                if not self._closing:
                    self._connection_lost(sub)
                return
            except Exception as exc:
                if self._closing:
                    return
                # E.g. the consumer was deleted, or the server is unavailable: keep asking,
                # slowly (nats-py reconnects by itself).
                delay = backoff.failed()
                logger.warning(
                    "fetch from JetStream consumer %r failed (%s: %s); retrying in %.1fs",
                    _compat.consumer_name(sub),
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await self._pause(feed, delay)
                continue
            backoff.succeeded()
            shadows = feed.shadowed_by
            for msg in msgs:
                if shadows and any(covers(s, msg.subject) for s in shadows):
                    # An earlier subscription of this group delivers it too and runs every
                    # matching handler: this copy is redundant.
                    await msg.ack()
                    continue
                feed.inflight += 1
                held[id(msg)] = (msg, feed)
                size = len(msg.data)
                self.held_bytes += size
                self._message_size = max(size, self._message_size * _SIZE_DECAY, 1.0)
                self._ready.append((feed, msg))
            if self._ready:
                self._wakeup.set()

    def _connection_lost(self, sub: PullSubscription) -> None:
        connection = _compat.connection_of(sub)
        cause = getattr(connection, "last_error", None)
        self._lost = SubscriptionLostError(
            f"the NATS connection of JetStream consumer {loggable(_compat.consumer_name(sub))} "
            f"was closed for good ({loggable(cause or 'closed')}) and does not reconnect; "
            "unacknowledged messages are redelivered: restart the service"
        )
        logger.error("%s", self._lost)

    # -- keeping held messages ---------------------------------------------------------------

    async def _progress_loop(self) -> None:
        """Every third of ``ack_wait``, tell JetStream each held message is being worked on.

        One task for all held messages; the ``+WPI`` publishes are buffered and flushed by
        nats-py together, without a round trip each.
        """
        interval = await self._progress_interval()
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), interval)
            if self._closing:
                return
            try:
                for msg, _ in list(self._held.values()):
                    await msg.in_progress()
            except nats.errors.ConnectionClosedError:
                return  # closed for good: nothing held can be kept any more
            except nats.errors.Error as exc:
                # E.g. reconnecting with a full outbound buffer: try again next period.
                logger.warning(
                    "could not report held JetStream messages in progress (%s: %s); "
                    "those handled for longer than ack_wait may be delivered again",
                    type(exc).__name__,
                    exc,
                )

    async def _progress_interval(self) -> float:
        ack_wait = self.ack_wait
        if ack_wait is None:
            ack_wait = await self._redelivery_timeout()
        return min(max(ack_wait / 3, _MIN_PROGRESS_INTERVAL), _MAX_PROGRESS_INTERVAL)

    async def _redelivery_timeout(self) -> float:
        """The shortest time after which one of the subscriptions' consumers redelivers."""
        timeouts: list[float] = []
        for sub in self.subscriptions:
            try:
                config = (await sub.consumer_info()).config
            except Exception as exc:
                logger.warning(
                    "could not read the ack_wait of JetStream consumer %r (%s: %s); "
                    "assuming %.0fs: pass ack_wait= to NATSConsumer to set it",
                    _compat.consumer_name(sub),
                    type(exc).__name__,
                    exc,
                    _DEFAULT_ACK_WAIT,
                )
                timeouts.append(_DEFAULT_ACK_WAIT)
                continue
            timeouts.append(config.ack_wait or _DEFAULT_ACK_WAIT)
            timeouts.extend(config.backoff or ())  # redelivery after backoff[n] instead
        return min(timeouts, default=_DEFAULT_ACK_WAIT)

    async def _pause(self, feed: _Feed, seconds: float) -> None:
        """Sleep ``seconds`` unless :meth:`close` wakes the feed first."""
        feed.room.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(feed.room.wait(), seconds)

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        """Start fetching (seed style the subscriptions were made by their user)."""
        self._spawn_fetchers()

    supports_broker_retries = True

    def use_broker_retries(self, delays: Sequence[float] = ()) -> None:
        """Broker retries are JetStream's own redeliveries: a redelivered message comes with
        ``Message.retry`` set, its attempt the server's delivery count."""
        self._broker_retries = True

    async def retry_later(self, message: Message, retries: Sequence[RetryLater]) -> None:
        """``-NAK`` with the shortest delay: JetStream delivers the message again then (to any
        consumer of the group). The message itself comes back, so every handler of the group
        that matches it runs again."""
        msg: Msg = message.extra
        self._settled(msg)
        await msg.nak(delay=min(retry.delay for retry in retries))

    async def listen(self) -> AsyncIterator[Message]:
        self._spawn_fetchers()
        ready = self._ready
        wakeup = self._wakeup
        while True:
            if ready:
                _, msg = ready.popleft()
                message = to_message(msg)
                if self._broker_retries and message.delivery_attempt > 1:
                    message.retry = Retried(None, message.delivery_attempt, counted=True)
                yield message
                continue
            if self._closing or self._stopped == len(self._tasks):
                if self._lost is not None and not self._closing:
                    raise self._lost
                return
            wakeup.clear()
            await wakeup.wait()

    # -- settling -----------------------------------------------------------------------------

    def _settled(self, msg: Msg) -> None:
        held = self._held.pop(id(msg), None)
        if held is None:
            return  # settled twice, or not ours
        self.held_bytes -= len(msg.data)
        held[1].inflight -= 1
        for feed in self._feeds:  # bytes freed: any feed may fetch again
            feed.room.set()

    async def ack(self, message: Message) -> None:
        msg: Msg = message.extra
        # No longer held before the +ACK goes out: no in-progress signal after it.
        self._settled(msg)
        await msg.ack()

    async def nack(self, message: Message) -> None:
        msg: Msg = message.extra
        self._settled(msg)
        await msg.nak()

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        if self.dead_letters is None:
            return False
        await self.dead_letters.put(message, failure, group=self.group)
        return True

    async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool:
        """Store the message under the group's fallback subject (``{prefix}._fallback.{group}``
        of the dead-letter stream)."""
        if self.dead_letters is None:
            return False
        await self.dead_letters.put(message, failure, group=self.group, fallback=True)
        return True

    # -- closing ------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop fetching (waiting for a fetch in progress to end) and hand back what was
        fetched but never listened to."""
        if self._closing:
            return
        self._closing = True
        self._closed.set()
        for feed in self._feeds:
            feed.room.set()
        self._wakeup.set()
        if self._progress is not None:
            self._progress.cancel()  # may be asking for ack_wait: no need to wait for that
            await asyncio.gather(self._progress, return_exceptions=True)
        if self._tasks:
            done, pending = await asyncio.wait(self._tasks, timeout=self.fetch_timeout + 5.0)
            for task in pending:  # a fetch stuck past its own timeout: give up on it
                task.cancel()
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    logger.error("JetStream fetch task failed", exc_info=task.exception())
        while self._ready:
            feed, msg = self._ready.popleft()
            self._settled(msg)
            try:
                await msg.nak()
            except nats.errors.Error as exc:  # connection gone: ack_wait redelivers it
                logger.debug("could not hand back a fetched message: %s", exc)

    async def lag(self) -> dict[str, int]:
        """Messages not yet delivered, per durable consumer (JetStream's ``num_pending``)."""
        return await jetstream_lag(self.subscriptions)


class NATSGroupConsumer(NATSConsumer):
    """The consumer of one group, built by :class:`~dispytch.nats.NATSBackend`.

    On :meth:`start`, for each handler subscription it finds the stream storing the subject
    (or adds the subject to the backend's stream), creates or updates a durable pull consumer
    named after the group and the subject, and subscribes to it.
    """

    def __init__(
        self,
        jetstream: JetStreamContext,
        *,
        group: str,
        stream: str,
        stream_options: Mapping[str, Any],
        consumer_options: Mapping[str, Any],
        prefetch: int,
        fetch_timeout: float,
        dead_letters: DeadLetterStore,
        max_buffer_bytes: int | None = None,
        connection: NATSClient | None = None,
    ) -> None:
        super().__init__(
            prefetch=prefetch,
            fetch_timeout=fetch_timeout,
            dead_letters=dead_letters,
            ack_wait=consumer_options.get("ack_wait"),
            group=group,
            max_buffer_bytes=max_buffer_bytes,
            connection=connection,
        )
        self.jetstream = jetstream
        self.group = group
        self.stream = stream
        self.stream_options = dict(stream_options)
        self.consumer_options = dict(consumer_options)

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        if self.subscriptions or self._closing:
            return
        js = self.jetstream
        placed: list[tuple[str, str]] = []  # (stream, filter subject), in subscription order
        for subject in dict.fromkeys(p.glob for p in subscriptions):
            stream = await stream_for(js, self.stream, subject, self.stream_options)
            name = consumer_name(self.group, subject)
            await _ensure_consumer(js, stream, name, subject, self.consumer_options)
            self.subscriptions.append(await js.pull_subscribe_bind(durable=name, stream=stream))
            placed.append((stream, subject))
        self._shadows = [
            tuple(s for st, s in placed[:i] if st == stream and overlaps(s, subject))
            for i, (stream, subject) in enumerate(placed)
        ]
        if self.subscriptions:
            self._spawn_fetchers()

    async def close(self) -> None:
        await super().close()
        for sub in self.subscriptions:
            try:
                await sub.unsubscribe()
            except (nats.errors.Error, ValueError) as exc:
                logger.debug("could not unsubscribe from %r: %s", _compat.consumer_name(sub), exc)


async def _ensure_consumer(
    js: JetStreamContext, stream: str, name: str, subject: str, options: Mapping[str, Any]
) -> None:
    """Create durable ``name`` on ``stream`` (or update its editable settings)."""
    config = ConsumerConfig(
        durable_name=name,
        filter_subject=subject,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy(options.get("deliver_policy", "all")),
        ack_wait=options.get("ack_wait"),
        max_ack_pending=options.get("max_ack_pending"),
        max_deliver=options.get("max_deliver"),
        inactive_threshold=options.get("inactive_threshold"),
    )
    try:
        await js.add_consumer(stream, config)
    except nats.js.errors.APIError as exc:
        raise ConfigurationError(
            f"JetStream refused consumer {name!r} on stream {stream!r} for {subject!r}: "
            f"{exc.description} (code {exc.err_code}); if its settings changed in a way "
            f"JetStream cannot update, delete it (nats consumer rm {stream} {name}) and "
            "restart; if the stream does not capture the whole subject, widen its subjects"
        ) from exc
