"""Consumer over an ``aiokafka.AIOKafkaConsumer``, committing only what was settled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, IllegalOperation, KafkaError

from dispytch.kafka.offsets import OffsetTracker
from dispytch.kafka.subscription import subscription_for
from dispytch.listener.consumer import Consumer, Message

if TYPE_CHECKING:
    from dispytch.routing import TopicPattern

__all__ = ["KafkaConsumer"]

logger = logging.getLogger("dispytch.kafka")

EnsureTopics = Callable[[Sequence[str]], Awaitable[None]]


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
    when any handler topic has ``{segments}``).

    Commits: the listener settles records out of order (different keys run concurrently), so
    for each partition this commits the offset after the contiguous settled prefix, never past
    a record still being handled. Commits are batched (every ``commit_interval`` seconds, or
    sooner after ``commit_every`` settled records), flushed when partitions are revoked (after
    waiting up to ``revoke_timeout`` seconds for their in-flight records) and on :meth:`close`.
    Keep ``enable_auto_commit=False``: aiokafka's auto-commit would commit records that are not
    handled yet.

    ``nack`` (a record handed back unhandled) seeks its partition back to the oldest unsettled
    record, so it and the records after it are fetched again by this process (at-least-once:
    records after it that were being handled may run twice). ``Message.delivery_attempt``
    counts those in-process redeliveries.

    Dead letters go through the listener's ``dead_letter_producer`` to ``{topic}.dlq``, with
    the failure in Kafka headers and the original record key.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        *,
        commit_interval: float = 0.1,
        commit_every: int = 500,
        revoke_timeout: float = 10.0,
        max_batch: int = 500,
        ensure_topics: EnsureTopics | None = None,
    ) -> None:
        self.consumer = consumer
        self.commit_interval = commit_interval
        self.commit_every = commit_every
        self.revoke_timeout = revoke_timeout
        self.max_batch = max_batch
        self._ensure_topics = ensure_topics
        self._tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self._buffer: deque[Any] = deque()
        self._redelivered: dict[tuple[str, int, int], int] = {}
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

    # -- subscribing --------------------------------------------------------------------------

    def _is_started(self) -> bool:
        return getattr(self.consumer, "_fetcher", None) is not None

    async def start(self, subscriptions: Sequence[TopicPattern]) -> None:
        """Subscribe (unless the consumer already is), start it if needed, start committing.

        Returns once the group assigned partitions, so records produced afterwards are read.
        """
        consumer = self.consumer
        if getattr(consumer, "_enable_auto_commit", False):
            logger.warning(
                "the AIOKafkaConsumer has enable_auto_commit=True: it may commit records that "
                "are not handled yet; build it with enable_auto_commit=False"
            )
        state = getattr(consumer, "_subscription", None)
        pattern = getattr(state, "subscribed_pattern", None)
        resubscribed = False
        if consumer.subscription() or pattern is not None:
            # The user subscribed: keep that subscription, adding our rebalance listener so
            # revoked partitions get their settled offsets committed first.
            auto = state is not None and state.partitions_auto_assigned()
            if auto and not isinstance(getattr(state, "listener", None), _CommitOnRevoke):
                listener = _CommitOnRevoke(self, getattr(state, "listener", None))
                if pattern is not None:
                    consumer.subscribe(pattern=pattern.pattern, listener=listener)
                else:
                    consumer.subscribe(topics=list(consumer.subscription()), listener=listener)
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
        if not self._is_started():
            await consumer.start()  # waits for the group's first assignment
            self._owns = True
        elif resubscribed and state is not None:
            wait = state.wait_for_assignment()
            try:
                await asyncio.wait_for(wait, self.revoke_timeout + 20)
            except TimeoutError:
                logger.warning("no partition assignment yet; records will be read once assigned")
        if self._commit_task is None:
            self._commit_task = asyncio.create_task(self._commit_loop(), name="dispytch-commit")

    # -- fetching -----------------------------------------------------------------------------

    async def listen(self) -> AsyncIterator[Message]:
        consumer = self.consumer
        buffer = self._buffer
        tracker = self._tracker
        redelivered = self._redelivered
        while not self._closing:
            if not buffer:
                try:
                    batches = await consumer.getmany(timeout_ms=500, max_records=self.max_batch)
                except ConsumerStoppedError:
                    return
                for records in batches.values():
                    buffer.extend(records)
                continue
            record = buffer.popleft()
            tracker.track(TopicPartition(record.topic, record.partition), record.offset)
            attempt = 1
            if redelivered:
                attempt = redelivered.pop((record.topic, record.partition, record.offset), 1)
            yield Message(
                topic=record.topic,
                payload=record.value,
                key=record.key,
                headers=(
                    {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}
                    if record.headers
                    else {}
                ),
                delivery_attempt=attempt,
                partition=record.partition,
                offset=record.offset,
                extra=record,
            )

    def _purge(self, partitions: Iterable[TopicPartition]) -> None:
        """Drop fetched-but-not-handed-out records of ``partitions``."""
        drop = {(tp.topic, tp.partition) for tp in partitions}
        if self._buffer and drop:
            keep = [r for r in self._buffer if (r.topic, r.partition) not in drop]
            self._buffer.clear()
            self._buffer.extend(keep)

    # -- settling -----------------------------------------------------------------------------

    async def ack(self, message: Message) -> None:
        if message.offset is None or message.partition is None:
            return
        tp = TopicPartition(message.topic, message.partition)
        if self._tracker.settle(tp, message.offset):
            self._settled_since_commit += 1
            self._dirty.set()
            if self._settled_since_commit >= self.commit_every:
                self._commit_now.set()
        if self._revoke_waiting:
            self._progress.set()

    async def nack(self, message: Message) -> None:
        if message.offset is None or message.partition is None:
            return
        tp = TopicPartition(message.topic, message.partition)
        self._tracker.abandon(tp, message.offset)
        if self._revoke_waiting:
            self._progress.set()
        if self._closing or tp not in self.consumer.assignment():
            return  # not committed; the partition's next owner reads it again
        restart = self._tracker.rewind(tp)
        if restart is None:
            return
        self._redelivered[(message.topic, message.partition, message.offset)] = (
            message.delivery_attempt + 1
        )
        self._purge([tp])
        self.consumer.seek(tp, restart)
        logger.debug("rewound %s to offset %d after a nack", tp, restart)

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

    async def commit(self, partitions: Iterable[TopicPartition] | None = None) -> None:
        """Commit the settled prefix of ``partitions`` (default: all) now."""
        async with self._commit_lock:
            if not self._commits_enabled:
                return
            due = self._tracker.due(partitions)
            if not due:
                return
            assigned = self.consumer.assignment()
            offsets = {tp: offset for tp, offset in due.items() if tp in assigned}
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except IllegalOperation:
                # A consumer without group_id has nowhere to commit; positions are its own.
                self._commits_enabled = False
                logger.info("the consumer has no group_id; offsets are not committed")
                return
            except KafkaError as exc:
                logger.warning(
                    "offset commit failed (%s: %s); uncommitted records will be read again",
                    type(exc).__name__,
                    exc,
                )
                return
            self._tracker.committed(offsets)

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
        await self.commit(revoked)
        self._tracker.forget(revoked)
        self._purge(revoked)

    async def close(self) -> None:
        """Commit what was settled, then stop the consumer if this object started it."""
        if self._closed:
            return
        self._closing = True
        self._closed = True
        if self._commit_task is not None:
            self._commit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._commit_task
            self._commit_task = None
        try:
            await self.commit()
        finally:
            self._buffer.clear()
            if self._owns:
                self._owns = False
                await self.consumer.stop()


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
