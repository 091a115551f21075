"""Consumer over an ``aiokafka.AIOKafkaConsumer``, committing only what was settled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalOperation, KafkaError, ProducerFenced

from dispytch.backoff import Backoff, backoff_delay
from dispytch.broker_retries import RETRY_DUE_HEADER, retried_message, retry_headers, tier_ms
from dispytch.emitter.producer import Outgoing
from dispytch.errors import ConfigurationError, DispytchError, TransactionError
from dispytch.kafka import _compat
from dispytch.kafka.attempts import PartitionDeliveries
from dispytch.kafka.lag import partition_lag
from dispytch.kafka.offsets import OffsetTracker
from dispytch.kafka.producer import KafkaProducer
from dispytch.kafka.records import BadBatch, RawRecord, read_batches
from dispytch.kafka.subscription import subscription_for
from dispytch.kafka.topics import retry_topic
from dispytch.kafka.wire import lenient_message, to_message
from dispytch.listener.consumer import Consumer, Failure, Message, RetryLater
from dispytch.untrusted import loggable

if TYPE_CHECKING:
    from dispytch.kafka.dead_letters import KafkaDeadLetters
    from dispytch.routing import TopicPattern

__all__ = ["KafkaConsumer", "KafkaFetchError"]

logger = logging.getLogger("dispytch.kafka")

EnsureTopics = Callable[[Sequence[str]], Awaitable[None]]

#: Offsets ahead of the last handed-out record that the committed metadata covers (see
#: :mod:`dispytch.kafka.attempts`): one extra commit per this many records.
DEFAULT_ATTEMPT_WINDOW = 256
_NEVER = 1 << 62
#: The window grows to at most this many times ``attempt_window``.
_MAX_WINDOWS = 64


def _untracked() -> PartitionDeliveries:
    """A partition whose deliveries are not counted (no group, nowhere to commit)."""
    return PartitionDeliveries(persisted=_NEVER, wanted=_NEVER, extend_at=_NEVER)


class KafkaFetchError(DispytchError):
    """aiokafka stopped fetching records (its background fetch task failed); nothing more would
    be received. The cause is chained; restart the service."""


class _Recovered:
    """A record (or an unreadable batch) read leniently after aiokafka failed to parse it."""

    __slots__ = ("item", "offset", "partition", "topic")

    def __init__(self, tp: TopicPartition, item: RawRecord | BadBatch) -> None:
        self.topic = tp.topic
        self.partition = tp.partition
        self.item = item
        self.offset = item.offset if isinstance(item, RawRecord) else item.next - 1


class KafkaConsumer(Consumer):
    """Feeds a listener from an ``AIOKafkaConsumer`` and commits what the listener settled.

    Seed style, with a consumer you built (started or not; one this class starts, it also
    stops on :meth:`close`)::

        consumer = AIOKafkaConsumer("user_events", bootstrap_servers="localhost:9092",
                                    group_id="users", enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        listener = EventListener(KafkaConsumer(consumer))

    If the consumer is not subscribed yet, it is subscribed to the handlers' topics (one regex
    when any handler topic has ``{segments}``; it never matches a dead-letter topic). A
    subscription you made is kept as it is (a running consumer is not subscribed again).

    Commits: the listener settles records out of order (different keys run concurrently), so
    for each partition this commits the offset after the contiguous settled prefix, never past
    a record still being handled. Commits are batched (every ``commit_interval`` seconds, or
    sooner after ``commit_every`` settled records), flushed when partitions are revoked (after
    waiting up to ``revoke_timeout`` seconds for their in-flight records) and on :meth:`close`.
    Keep ``enable_auto_commit=False``: aiokafka's auto-commit would commit records that are not
    handled yet.

    ``nack`` (a record handed back unhandled) seeks its partition back to the oldest unsettled
    record, so it and the records after it are fetched again by this process (at-least-once:
    records after it that were being handled may run twice).

    ``Message.delivery_attempt`` counts deliveries across processes too: the commit metadata
    records which records were handed out; after a process died, the records it may have been
    handling come again as attempt 2, and if the process dies again among them they are handed
    out one at a time with their attempt recorded first, so the listener's ``max_deliveries``
    ends a crash loop (see :mod:`dispytch.kafka.attempts`; ``attempt_window`` is the least the
    metadata runs ahead). Needs a ``group_id``.

    A record aiokafka cannot parse (a header name that is not UTF-8, a CRC mismatch, a codec
    that is not installed) does not stop the consumer: it is read leniently and dead-lettered
    (a batch that cannot be read at all is skipped, logged at ERROR and counted in
    :attr:`skipped`); the records around it flow.

    Dead letters go through ``dead_letters`` (a :class:`~dispytch.kafka.KafkaDeadLetters`;
    the backend of an ``App`` passes one) to ``{topic}.dlq``, or, without it, through the
    listener's ``dead_letter_producer``.

    **Transactional mode** (``transactions=``, a :class:`KafkaProducer` over an
    ``AIOKafkaProducer`` with a ``transactional_id``, and ``group_id``): the events a handler
    returns are not sent by the listener but staged here (:attr:`stage_outputs`), and every
    commit (the metadata commits included) is one Kafka transaction holding the staged
    outputs of the records it commits and their offsets (``send_offsets_to_transaction``): a
    consumer reading the output topics with ``isolation_level="read_committed"`` sees each
    input's outputs exactly once, whatever crash happens in between. Outputs of a record are
    committed only together with an offset past it, so a record settled out of order waits
    for the records before it. A transaction that fails before its commit request is aborted
    and retried (``transaction_attempts``); one that still fails, or fails at the commit
    request, or is fenced, stops the consumer with :class:`~dispytch.errors.TransactionError`
    (nothing more is committed; the restarted process resumes from the last committed
    transaction). Dead letters stay outside transactions.
    **Broker-delayed retries** (``retry_mode="broker"``, with ``dead_letters``) go to the
    group's retry topics, one per delay tier (``dispytch.retry.<group>.<ms>ms``, the handlers'
    delays rounded to two significant digits), which the consumer subscribes to as well. Each
    record carries its due time (``x-dispytch-retry-due``); a record fetched before it is due
    is not handed out: its partition is paused and rewound to it until then, so no slot is
    held while it waits and the records behind it (due later, as the tier's delay is the same)
    wait with it.
    """

    supports_broker_retries = True

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        commit_interval: float = 0.1,
        commit_every: int = 500,
        revoke_timeout: float = 10.0,
        max_batch: int = 500,
        ensure_topics: EnsureTopics | None = None,
        dead_letters: KafkaDeadLetters | None = None,
        attempt_window: int = DEFAULT_ATTEMPT_WINDOW,
        transactions: KafkaProducer | None = None,
        group_id: str | None = None,
        transaction_attempts: int = 3,
    ) -> None:
        if transactions is not None and not group_id:
            raise TransactionError("a transactional KafkaConsumer needs the group_id it commits")
        self.consumer = consumer
        self.commit_interval = commit_interval
        self.commit_every = commit_every
        self.revoke_timeout = revoke_timeout
        self.max_batch = max_batch
        self.dead_letters = dead_letters
        self.attempt_window = max(attempt_window, 2)
        #: Records (or unreadable batches) skipped because they could be neither handled nor
        #: dead-lettered.
        self.skipped = 0
        self._ensure_topics = ensure_topics
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._buffer: deque[Any] = deque()
        self._redelivered: dict[tuple[str, int, int], int] = {}
        self._deliveries: dict[TopicPartition, PartitionDeliveries] = {}
        # Partitions being recovered: their records, handed out one at a time.
        self._recovering: dict[TopicPartition, deque[Any]] = {}
        self._ready: deque[TopicPartition] = deque()  # recovering, may hand out the next one
        self._wake = asyncio.Event()
        self._extending: dict[TopicPartition, asyncio.Task[None]] = {}
        self._owns = False
        self._closing = False
        self._closed = False
        self._commits_enabled = True
        self._settled_since_commit = 0
        self._dirty = asyncio.Event()
        self._commit_now = asyncio.Event()
        self._progress = asyncio.Event()
        self._revoke_waiting = False
        self._commit_lock = asyncio.Lock()
        self._commit_task: asyncio.Task[None] | None = None
        # Transactional mode: the producer, the outputs staged per record, the records handed
        # out now (by (topic, partition, offset); a settle or stage of a record handed out
        # before a rewind is stale), and the error that stopped the consumer.
        self._txn = transactions
        self._group_id = group_id or ""
        self.transaction_attempts = transaction_attempts
        self._staged: dict[TopicPartition, dict[int, list[Outgoing]]] = {}
        self._live: dict[tuple[str, int, int], Any] = {}
        self._fatal: BaseException | None = None
        if transactions is not None:
            self.stage_outputs = self._stage
        #: delay tier (ms) -> retry topic; empty without broker retries
        self._retry_tiers: dict[int, str] = {}
        self._retry_topics: frozenset[str] = frozenset()
        self._due_timers: dict[TopicPartition, asyncio.TimerHandle] = {}

    @property
    def group(self) -> str | None:
        return self.dead_letters.group if self.dead_letters is not None else None

    # -- subscribing --------------------------------------------------------------------------

    def use_broker_retries(self, delays: Sequence[float] = ()) -> None:
        """Subscribe to the group's retry topics too, one per delay tier of ``delays``."""
        group = self.group
        if group is None or self.dead_letters is None:
            raise ConfigurationError(
                "broker retries on Kafka need the consumer's group and dead-letter writer "
                "(KafkaConsumer(..., dead_letters=KafkaDeadLetters(producer, group)), as the "
                "backend builds it)"
            )
        tiers = sorted({tier_ms(delay) for delay in delays} or {1000})
        self._retry_tiers = {tier: retry_topic(group, tier) for tier in tiers}
        self._retry_topics = frozenset(self._retry_tiers.values())

    async def retry_later(self, message: Message, retries: Sequence[RetryLater]) -> None:
        """Produce a copy per retry to the retry topic of its delay tier (acks=all), then ack."""
        writer = self.dead_letters
        if writer is None or not self._retry_tiers:
            raise ConfigurationError("use_broker_retries() was not called before start()")
        record = message.extra
        value = getattr(record, "value", message.payload)
        now = time.time()
        for retry in retries:
            topic = self._retry_tiers[_tier_for(self._retry_tiers, tier_ms(retry.delay))]
            headers = retry_headers(message, retry, int((now + retry.delay) * 1000))
            await writer.producer.send_record(
                topic,
                value if value is not None else b"",
                key=message.key,
                headers=[(name, text.encode()) for name, text in headers.items()],
            )
        await self.ack(message)

    def _not_due(self, tp: TopicPartition, record: Any) -> bool:
        """For a record of a retry topic that is not due yet: rewind and pause its partition
        until it is (``True``), so nothing waits in a slot."""
        due = 0
        for name, value in record.headers or ():
            if name == RETRY_DUE_HEADER:
                text = (value or b"").decode("ascii", "replace")
                due = int(text) if text.isdigit() and len(text) < 16 else 0
        wait = due / 1000 - time.time()
        if wait <= 0:
            return False
        # Fetched records of the partition behind it go too: read again once it is due.
        if any((r.topic, r.partition) == (tp.topic, tp.partition) for r in self._buffer):
            keep = [r for r in self._buffer if (r.topic, r.partition) != (tp.topic, tp.partition)]
            self._buffer.clear()
            self._buffer.extend(keep)
        consumer = self.consumer
        consumer.seek(tp, record.offset)
        consumer.pause(tp)
        timer = self._due_timers.pop(tp, None)
        if timer is not None:
            timer.cancel()
        # At most a minute at a time: a record with a forged far-off due time is checked again.
        self._due_timers[tp] = asyncio.get_running_loop().call_later(min(wait, 60.0), self._due, tp)
        return True

    def _due(self, tp: TopicPartition) -> None:
        self._due_timers.pop(tp, None)
        if tp in self.consumer.assignment() and tp not in self._recovering:
            self.consumer.resume(tp)

    def _tp(self, message: Message) -> TopicPartition:
        """The partition ``message`` was read from (a retry is routed by its original topic
        but settled in its retry topic)."""
        topic = message.topic
        if message.retry is not None:
            topic = getattr(message.extra, "topic", topic)
        return TopicPartition(topic, message.partition or 0)

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        """Subscribe (unless the consumer already is), start it if needed, start committing.

        Returns once the group assigned partitions, so records produced afterwards are read.
        """
        if self._retry_topics:
            from dispytch.routing import TopicPattern

            subscriptions = [
                *subscriptions,
                *(TopicPattern(topic, "", ()) for topic in sorted(self._retry_topics)),
            ]
        consumer = self.consumer
        if _compat.auto_commit_enabled(consumer):
            logger.warning(
                "the AIOKafkaConsumer has enable_auto_commit=True: it may commit records that "
                "are not handled yet; build it with enable_auto_commit=False"
            )
        current = _compat.subscription(consumer)
        resubscribed = False
        if current.exists:
            # The user subscribed: keep that subscription, adding our rebalance listener so
            # revoked partitions get their settled offsets committed first.
            if (
                current.auto_assigned
                and not isinstance(current.listener, _CommitOnRevoke)
                and not _compat.set_rebalance_listener(
                    consumer, lambda inner: _CommitOnRevoke(self, inner)
                )
            ):
                listener = _CommitOnRevoke(self, current.listener)
                if current.pattern is not None:
                    consumer.subscribe(pattern=current.pattern.pattern, listener=listener)
                else:
                    consumer.subscribe(topics=list(current.topics), listener=listener)
                resubscribed = True
        else:
            sub = subscription_for(subscriptions)
            if not sub.topics and sub.pattern is None:
                logger.warning("no handler topics to subscribe to; the consumer will idle")
            else:
                if sub.topics and self._ensure_topics is not None:
                    await self._ensure_topics(sub.topics)
                listener = _CommitOnRevoke(self, None)
                if sub.pattern is not None:
                    consumer.subscribe(pattern=sub.pattern, listener=listener)
                else:
                    consumer.subscribe(topics=list(sub.topics), listener=listener)
                resubscribed = True
        # Cannot tell (another aiokafka): a consumer Dispytch was handed unstarted is the case
        # it is built for, so it is started.
        if not _compat.consumer_started(consumer):
            await consumer.start()  # waits for the group's first assignment
            self._owns = True
        elif resubscribed:
            try:
                await asyncio.wait_for(current.assigned(), self.revoke_timeout + 20)
            except TimeoutError:
                logger.warning("no partition assignment yet; records will be read once assigned")
        if self._txn is not None:
            await self._txn.start()  # fences an older producer of the same transactional_id
        if self._commit_task is None:
            self._commit_task = asyncio.create_task(self._commit_loop(), name="dispytch-commit")

    # -- fetching -----------------------------------------------------------------------------

    async def listen(self) -> AsyncIterator[Message]:
        buffer = self._buffer
        tracker = self._tracker
        redelivered = self._redelivered
        deliveries = self._deliveries
        recovering = self._recovering
        live = self._live if self._txn is not None else None
        while not self._closing:
            if self._fatal is not None:
                raise self._fatal
            if self._ready:
                message = await self._next_recovered()
                if message is not None:
                    yield self._handed(message)
                continue
            if not buffer:
                if not await self._fetch():
                    return
                continue
            record = buffer.popleft()
            tp = TopicPartition(record.topic, record.partition)
            retried = record.topic in self._retry_topics
            if retried and type(record) is not _Recovered and self._not_due(tp, record):
                continue
            offset = record.offset
            state = deliveries.get(tp)
            if state is None:
                state = await self._track_deliveries(tp, offset)
            if (recovering and tp in recovering) or (state.serial and offset < state.recover_below):
                self._hold(tp, record)
                continue
            if offset >= state.extend_at:
                await self._extend(tp, state, offset)
            tracker.track(tp, offset)
            attempt = 1
            if redelivered:
                attempt = redelivered.pop((record.topic, record.partition, offset), 1)
            if offset < state.recover_below:
                attempt = max(attempt, state.attempt(offset))
            if type(record) is _Recovered:
                message = await self._lenient(tp, record, attempt)
                if message is not None:
                    yield self._handed(message)
                continue
            message = to_message(record, attempt)
            if retried:
                message = retried_message(message)
            if live is not None:
                live[(record.topic, record.partition, offset)] = message.extra
            yield message

    def _handed(self, message: Message) -> Message:
        """Transactional mode: remember ``message`` as the one handed out for its offset."""
        if self._txn is not None:
            tp = self._tp(message)
            self._live[(tp.topic, tp.partition, message.offset or 0)] = message.extra
        return message

    async def _fetch(self) -> bool:
        """Fill the buffer with what aiokafka fetched; ``False`` once the consumer stopped.

        One record is waited for across partitions, then each partition with fetched records
        is drained on its own: when aiokafka fails to parse a partition's records, everything
        it had taken from other partitions in the same call would be lost with the exception,
        so no call ever takes records from two partitions.
        """
        consumer = self.consumer
        buffer = self._buffer
        try:
            first = await self._getmany(500, 1)
        except ConsumerStoppedError:
            return False
        except Exception as exc:
            found = _compat.failed_partition(consumer)
            if found is None:
                raise
            await self._read_leniently(exc, *found)
            return True
        if not first:
            error = _compat.fetcher_error(consumer)
            if error is not None:
                raise KafkaFetchError(
                    f"aiokafka stopped fetching records ({type(error).__name__}: "
                    f"{loggable(error)}); restart the service"
                ) from error
            return True
        for records in first.values():
            buffer.extend(records)
        room = self.max_batch - 1  # at most max_batch records per round, as one getmany
        for tp in _compat.ready_partitions(consumer):
            if room <= 0:
                break
            position = _compat.position(consumer, tp)
            try:
                more = await consumer.getmany(tp, timeout_ms=0, max_records=room)
            except ConsumerStoppedError:
                return False
            except Exception as exc:
                if position is None:
                    raise
                await self._read_leniently(exc, tp, position)
                continue
            for records in more.values():
                buffer.extend(records)
                room -= len(records)
        return True

    async def _getmany(self, timeout_ms: int, max_records: int) -> dict[Any, Any]:
        """``getmany``; while a partition is being recovered, cut short when it may hand out its
        next record."""
        if not self._recovering:
            batches: dict[Any, Any] = await self.consumer.getmany(
                timeout_ms=timeout_ms, max_records=max_records
            )
            return batches
        self._wake.clear()
        fetch = asyncio.ensure_future(
            self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        )
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({fetch, wake}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            wake.cancel()
            if not fetch.done():
                fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fetch
        return {} if fetch.cancelled() else fetch.result()

    async def _read_leniently(self, error: Exception, tp: TopicPartition, position: int) -> None:
        """aiokafka failed to parse the records of ``tp`` from ``position``: read them leniently
        from the broker's raw bytes instead."""
        consumer = self.consumer
        raw = await _compat.fetch_raw(consumer, tp, position)
        items = []
        if raw is not None:
            for item in read_batches(
                raw.data, aborted=raw.aborted, read_committed=raw.read_committed
            ):
                last = item.offset if isinstance(item, RawRecord) else item.next - 1
                if last >= position:
                    items.append(_Recovered(tp, item))
        if not items:
            raise KafkaFetchError(
                f"aiokafka cannot read the records of {loggable(tp.topic)}[{tp.partition}] from "
                f"offset {position} ({type(error).__name__}: {loggable(error)}) and they could "
                "not be read leniently either; nothing after them is consumed"
            ) from error
        logger.warning(
            "aiokafka cannot read the records of %s[%d] from offset %d (%s: %s); %d read leniently",
            loggable(tp.topic),
            tp.partition,
            position,
            type(error).__name__,
            loggable(error),
            len(items),
        )
        self._buffer.extend(items)
        consumer.seek(tp, items[-1].offset + 1)

    async def _lenient(
        self, tp: TopicPartition, record: _Recovered, attempt: int
    ) -> Message | None:
        """The message of a leniently read record; ``None`` when it was settled here (a batch
        that cannot be read)."""
        item = record.item
        if isinstance(item, BadBatch):
            self.skipped += item.next - item.first
            logger.error(
                "SKIPPED records %d..%d of %s[%d]: the batch cannot be read (%s); %d skipped "
                "so far",
                item.first,
                item.next - 1,
                loggable(tp.topic),
                tp.partition,
                loggable(item.reason),
                self.skipped,
            )
            self._settle(tp, record.offset)
            return None
        # A record whose metadata cannot be decoded comes marked Message.undecodable: the
        # listener dead-letters it.
        return lenient_message(tp.topic, tp.partition, item, attempt).message

    # -- delivery attempts across processes ---------------------------------------------------

    async def _track_deliveries(self, tp: TopicPartition, first: int) -> PartitionDeliveries:
        """What the committed metadata of ``tp`` says about its previous owner (``first``: the
        offset of the first record fetched)."""
        state = _untracked()
        if self._commits_enabled:
            try:
                found = await _compat.committed(self.consumer, [tp])
            except KafkaError as exc:
                logger.warning(
                    "could not read the committed offset of %s (%s: %s); delivery attempts of "
                    "its records are not counted across processes",
                    tp,
                    type(exc).__name__,
                    exc,
                )
                found = None
            if found is not None:
                offset, metadata = found.get(tp, (-1, ""))
                # Records written since then (at or above the highwater) were never handed out.
                state = PartitionDeliveries.from_committed(
                    offset, metadata, self.consumer.highwater(tp)
                )
                if state.recover_below:
                    logger.warning(
                        "the previous owner of %s stopped without committing (a crash?): "
                        "records %d..%d may have been in flight; handed out %s as attempt %d",
                        tp,
                        offset,
                        state.recover_below - 1,
                        "one at a time (it died in this range before)"
                        if state.serial
                        else "as usual",
                        state.base_attempt,
                    )
        if state.wanted != _NEVER:
            state.window = self.attempt_window
            state.extend_at = state.persisted - (state.window >> 1)
        self._deliveries[tp] = state
        if state.recover_below and not state.serial:
            await self._commit_metadata(tp, first)  # the range and its count, before any of it
        return state

    async def _extend(self, tp: TopicPartition, state: PartitionDeliveries, offset: int) -> None:
        """Raise the committed watermark ahead of ``offset``: in the background while
        ``offset`` is still below it, waiting for it once ``offset`` reached it."""
        if offset >= state.persisted and tp in self._extending:
            # Handed out faster than a commit comes back: look further ahead from now on.
            state.window = min(state.window * 2, self.attempt_window * _MAX_WINDOWS)
        while not self._closing:
            task = self._extending.get(tp)
            if task is None:
                task = asyncio.create_task(self._extend_now(tp, state, offset))
                self._extending[tp] = task
                task.add_done_callback(lambda done: self._extending.pop(tp, None))
            if offset < state.persisted:
                return
            await asyncio.shield(task)

    async def _extend_now(
        self, tp: TopicPartition, state: PartitionDeliveries, offset: int
    ) -> None:
        now = asyncio.get_running_loop().time()
        if state.last_raise is not None and now > state.last_raise[0]:
            # Ahead by what is handed out in a quarter second (between bounds): one commit per
            # ~0.1 s at any rate, and a crash leaves only that much to recover.
            rate = (offset - state.last_raise[1]) / (now - state.last_raise[0])
            state.window = min(
                max(int(rate * 0.25), state.window >> 1, self.attempt_window),
                self.attempt_window * _MAX_WINDOWS,
            )
        state.last_raise = (now, offset)
        state.wanted = max(state.wanted, offset + state.window)
        await self._commit_metadata(tp, offset)

    async def _commit_metadata(self, tp: TopicPartition, offset: int) -> None:
        """Commit ``tp``'s metadata at its settled position (or at ``offset``, the record about
        to be handed out, when nothing is tracked yet), retrying until it is stored."""
        backoff = Backoff(0.2, 5.0)
        while not self._closing:
            position = self._tracker.position(tp)
            try:
                await self.commit([tp], force={tp: offset if position is None else position})
            except KafkaError:
                await asyncio.sleep(backoff.failed())  # logged by commit(): broker unavailable
                continue
            if not self._commits_enabled:
                self._deliveries[tp] = _untracked()
            return

    def _hold(self, tp: TopicPartition, record: Any) -> None:
        """Queue a record of a partition being recovered."""
        queue = self._recovering.get(tp)
        if queue is None:
            queue = self._recovering[tp] = deque()
        queue.append(record)
        state = self._deliveries[tp]
        if state.current is None and len(queue) == 1:
            self._ready.append(tp)
        if len(queue) >= self.max_batch and tp in self.consumer.assignment():
            self.consumer.pause(tp)  # bounded: fetch more once the queue drained

    async def _next_recovered(self) -> Message | None:
        """Hand out the next record of a recovering partition (its attempt committed first)."""
        tp = self._ready.popleft()
        queue = self._recovering.get(tp)
        state = self._deliveries.get(tp)
        if not queue or state is None or state.current is not None:
            return None
        record = queue[0]
        offset = record.offset
        if offset >= state.recover_below:
            # The range is recovered: the rest flows as usual, in order.
            del self._recovering[tp]
            self._buffer.extendleft(reversed(queue))
            if tp in self.consumer.assignment():
                self.consumer.resume(tp)
            logger.info("%s recovered; handing out its records as usual again", tp)
            return None
        queue.popleft()
        if not queue and tp in self.consumer.assignment():
            self.consumer.resume(tp)
        attempt = state.attempt(offset)
        attempt = max(attempt, self._redelivered.pop((tp.topic, tp.partition, offset), 0))
        state.current = (offset, attempt)
        await self._commit_metadata(tp, offset)
        self._tracker.track(tp, offset)
        if type(record) is _Recovered:
            return await self._lenient(tp, record, attempt)
        if tp.topic in self._retry_topics:
            # Recovering after a crash: handed out at once, due or not.
            return retried_message(to_message(record, attempt))
        return to_message(record, attempt)

    def _recovered(self, tp: TopicPartition, offset: int) -> None:
        """The recovered record ``offset`` of ``tp`` was settled: the next one may go."""
        state = self._deliveries.get(tp)
        if state is None or state.current is None or state.current[0] != offset:
            return
        state.current = None
        if self._recovering.get(tp):
            self._ready.append(tp)
            self._wake.set()

    def _purge(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop fetched-but-not-handed-out records of ``partitions``."""
        drop = {(tp.topic, tp.partition) for tp in partitions}
        if self._buffer and drop:
            keep = [r for r in self._buffer if (r.topic, r.partition) not in drop]
            self._buffer.clear()
            self._buffer.extend(keep)
        assigned = self.consumer.assignment()
        for tp in partitions:
            if self._recovering.pop(tp, None) is not None and tp in assigned:
                self.consumer.resume(tp)
            state = self._deliveries.get(tp)
            if state is not None:
                state.current = None
        if self._ready:
            ready = [tp for tp in self._ready if tp in self._recovering]
            self._ready.clear()
            self._ready.extend(ready)

    # -- settling -----------------------------------------------------------------------------

    def _current(self, message: Message) -> bool:
        """Transactional mode: whether ``message`` is the record handed out now for its offset
        (and forget it), not one handed out before a rewind."""
        tp = self._tp(message)
        key = (tp.topic, tp.partition, message.offset or 0)
        if self._live.get(key) is not message.extra:
            return False
        del self._live[key]
        return True

    async def _stage(self, message: Message, outgoing: list[Outgoing]) -> None:
        """Keep the outputs of ``message`` for the transaction that commits its offset."""
        if message.offset is None or message.partition is None:
            return
        tp = self._tp(message)
        key = (tp.topic, tp.partition, message.offset)
        if self._live.get(key) is not message.extra:
            return  # handed out before a rewind: it is read and handled again
        self._staged.setdefault(tp, {}).setdefault(message.offset, []).extend(outgoing)

    def _drop(self, partitions: Iterable[TopicPartition]) -> None:
        """Transactional mode: forget the staged outputs and the handed-out records of
        ``partitions`` (they are read and handled again)."""
        drop = {(tp.topic, tp.partition) for tp in partitions}
        for tp in partitions:
            self._staged.pop(tp, None)
        for key in [k for k in self._live if (k[0], k[1]) in drop]:
            del self._live[key]

    async def ack(self, message: Message) -> None:
        if message.offset is None or message.partition is None:
            return
        if self._txn is not None and not self._current(message):
            return
        if message.retry is not None:
            self._settle(self._tp(message), message.offset)
            return
        self._settle(TopicPartition(message.topic, message.partition), message.offset)

    def _settle(self, tp: TopicPartition, offset: int) -> None:
        if self._tracker.settle(tp, offset):
            self._settled_since_commit += 1
            self._dirty.set()
            if self._settled_since_commit >= self.commit_every:
                self._commit_now.set()
        if self._recovering:
            self._recovered(tp, offset)
        if self._revoke_waiting:
            self._progress.set()

    async def nack(self, message: Message) -> None:
        if message.offset is None or message.partition is None:
            return
        if self._txn is not None and not self._current(message):
            return
        tp = self._tp(message)
        self._tracker.abandon(tp, message.offset)
        if self._revoke_waiting:
            self._progress.set()
        if self._closing or tp not in self.consumer.assignment():
            return  # not committed; the partition's next owner reads it again
        restart = self._tracker.rewind(tp)
        if restart is None:
            return
        self._redelivered[(tp.topic, tp.partition, message.offset)] = message.delivery_attempt + 1
        self._purge([tp])
        if self._txn is not None:
            self._drop([tp])
        self.consumer.seek(tp, restart)
        logger.debug("rewound %s to offset %d after a nack", tp, restart)

    async def dead_letter(self, message: Message, failure: Failure) -> bool:
        """Write ``message`` to ``{topic}.dlq`` (``False`` without :attr:`dead_letters`)."""
        if self.dead_letters is None:
            return False
        await self.dead_letters.put(message, failure)
        return True

    async def dead_letter_fallback(self, message: Message, failure: Failure) -> bool:
        """Write ``message`` to the group's fallback topic ``dispytch.dlq.<group>``."""
        if self.dead_letters is None:
            return False
        return await self.dead_letters.put_fallback(message, failure)

    # -- committing ---------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._dirty.wait()
            # Coalesce: one commit round trip per interval (or per commit_every settles).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._commit_now.wait(), self.commit_interval)
            self._dirty.clear()
            self._commit_now.clear()
            self._settled_since_commit = 0
            try:
                await self.commit()
            except Exception:
                # Keep committing later; what is not committed is only read again.
                logger.exception("offset commit failed")

    async def commit(
        self,
        partitions: Iterable[TopicPartition] | None = None,
        *,
        force: dict[TopicPartition, int] | None = None,
        clean: bool = False,
    ) -> None:
        """Commit the settled prefix of ``partitions`` (default: all) now.

        ``force`` commits these partitions at these positions even when nothing was settled
        (to store their metadata). The metadata of each partition says which records were
        handed out (see :mod:`dispytch.kafka.attempts`); with ``clean`` (or once closing) it
        says none is in flight.
        """
        async with self._commit_lock:
            if not self._commits_enabled:
                return
            due = self._tracker.due(partitions)
            if force:
                due = {**force, **due}
            if not due:
                return
            assigned = self.consumer.assignment()
            deliveries = self._deliveries
            clean = clean or self._closing
            offsets: dict[TopicPartition, Any] = {}
            written: dict[TopicPartition, int] = {}
            for tp, offset in due.items():
                if tp not in assigned:
                    continue
                state = deliveries.get(tp)
                if state is None or state.wanted == _NEVER:
                    offsets[tp] = offset
                else:
                    offsets[tp] = (offset, "" if clean else state.metadata())
                    if not clean:
                        written[tp] = state.wanted
            if not offsets:
                return
            if self._txn is not None:
                if not await self._commit_transaction(offsets):
                    return
            else:
                try:
                    await self.consumer.commit(offsets)
                except IllegalOperation:
                    # A consumer without group_id has nowhere to commit; its own positions.
                    self._commits_enabled = False
                    logger.info("the consumer has no group_id; offsets are not committed")
                    return
                except KafkaError as exc:
                    logger.warning(
                        "offset commit failed (%s: %s); uncommitted records will be read again",
                        type(exc).__name__,
                        exc,
                    )
                    if force:
                        raise
                    return
            self._tracker.committed(
                {tp: o if isinstance(o, int) else o[0] for tp, o in offsets.items()}
            )
            for tp, watermark in written.items():
                state = deliveries.get(tp)
                if state is not None:
                    state.raised(watermark)

    async def _commit_transaction(self, offsets: dict[TopicPartition, Any]) -> bool:
        """Commit ``offsets`` (positions, or ``(position, metadata)``) with the staged outputs
        of the records before them, as one transaction (retried while it fails before its
        commit request). ``False``: it failed for good and the consumer stops."""
        positions = {tp: o if isinstance(o, int) else o[0] for tp, o in offsets.items()}
        outputs: list[Outgoing] = []
        for tp, position in positions.items():
            staged = self._staged.get(tp)
            if staged:
                for offset in sorted(o for o in staged if o < position):
                    outputs.extend(staged[offset])
        attempt = 1
        while True:
            try:
                await self._transaction(offsets, outputs)
                break
            except _CommitUnknown as exc:
                self._stop_transactions(exc.__cause__ or exc, len(outputs))
                return False
            except Exception as exc:
                if isinstance(exc, ProducerFenced) or attempt >= self.transaction_attempts:
                    self._stop_transactions(exc, len(outputs))
                    return False
                logger.warning(
                    "Kafka transaction of %d output(s) failed and was aborted (attempt %d/%d: "
                    "%s: %s); retrying",
                    len(outputs),
                    attempt,
                    self.transaction_attempts,
                    type(exc).__name__,
                    exc,
                )
                await asyncio.sleep(backoff_delay(attempt, 0.1, 2.0))
                attempt += 1
        for tp, position in positions.items():
            staged = self._staged.get(tp)
            if staged:
                for offset in [o for o in staged if o < position]:
                    del staged[offset]
        return True

    async def _transaction(
        self, offsets: dict[TopicPartition, Any], outputs: list[Outgoing]
    ) -> None:
        txn = self._txn
        if txn is None:  # pragma: no cover - only called in transactional mode
            raise TransactionError("not a transactional consumer")
        client = txn.producer
        await client.begin_transaction()
        try:
            if outputs:
                errors = await txn.send_many(outputs)
                first = next((e for e in errors if e is not None), None)
                if first is not None:
                    raise first
            await client.send_offsets_to_transaction(offsets, self._group_id)
        except BaseException:
            with contextlib.suppress(Exception):
                await client.abort_transaction()
            raise
        try:
            await client.commit_transaction()
        except Exception as exc:
            # Whether the broker committed is unknown: never send these outputs again.
            raise _CommitUnknown() from exc

    def _stop_transactions(self, exc: BaseException, outputs: int) -> None:
        self._commits_enabled = False
        self._fatal = TransactionError(
            f"the Kafka transaction of {outputs} output(s) and their input offsets failed "
            f"({type(exc).__name__}: {exc}); the consumer stops without committing more: the "
            "records since the last committed transaction are handled again after a restart. "
            "Check the broker and that no other process uses this transactional_id"
        )
        self._fatal.__cause__ = exc
        logger.error("%s", self._fatal)

    async def _commit_clean(self, partitions: Iterable[TopicPartition]) -> None:
        """Commit ``partitions`` with empty metadata: their records were not in flight when a
        process died (this one stops cleanly, or hands them over)."""
        force = {}
        for tp in partitions:
            state = self._deliveries.get(tp)
            position = self._tracker.position(tp)
            if state is not None and state.wanted != _NEVER and position is not None:
                force[tp] = position
        with contextlib.suppress(KafkaError):  # logged by commit(); the next owner recovers
            await self.commit(partitions, force=force, clean=True)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        if not self._closing:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.revoke_timeout
            while self._tracker.in_flight(revoked):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    logger.warning(
                        "partitions revoked with %d records still being handled; the next "
                        "owner will handle them again",
                        self._tracker.in_flight(revoked),
                    )
                    break
                self._progress.clear()
                self._revoke_waiting = True
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._progress.wait(), remaining)
                finally:
                    self._revoke_waiting = False
        await self._commit_clean(revoked)
        self._tracker.forget(revoked)
        self._purge(revoked)
        for tp in revoked:
            self._deliveries.pop(tp, None)
        if self._txn is not None:
            self._drop(revoked)

    async def close(self) -> None:
        """Commit what was settled, then stop the consumer if this object started it."""
        if self._closed:
            return
        self._closing = True
        self._closed = True
        for timer in self._due_timers.values():
            timer.cancel()
        self._due_timers.clear()
        if self._commit_task is not None:
            self._commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._commit_task
            self._commit_task = None
        extending = list(self._extending.values())
        for task in extending:
            task.cancel()
        await asyncio.gather(*extending, return_exceptions=True)
        try:
            await self._commit_clean(list(self._deliveries))
            await self.commit()
        finally:
            self._buffer.clear()
            self._recovering.clear()
            self._ready.clear()
            if self._owns:
                self._owns = False
                await self.consumer.stop()
            if self._txn is not None:
                await self._txn.close()

    async def lag(self) -> dict[str, int]:
        """Records after this consumer's position per topic (high watermark minus position)."""
        return await partition_lag(self.consumer)


class _CommitUnknown(Exception):
    """The commit request of a transaction failed: it may or may not have been committed."""


class _CommitOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Flushes settled offsets of revoked partitions, then calls the user's listener, if any."""

    def __init__(self, owner: KafkaConsumer, inner: Any) -> None:
        self.owner = owner
        self.inner = inner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.owner._on_revoked(set(revoked))
        if self.inner is not None:
            result = self.inner.on_partitions_revoked(revoked)
            if asyncio.iscoroutine(result):
                await result

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.inner is not None:
            result = self.inner.on_partitions_assigned(assigned)
            if asyncio.iscoroutine(result):
                await result


def _tier_for(tiers: dict[int, str], wanted: int) -> int:
    """The tier for a delay of ``wanted`` ms: the largest not above it (the due time in the
    record makes up the rest), else the smallest."""
    below = [tier for tier in tiers if tier <= wanted]
    return max(below) if below else min(tiers)
