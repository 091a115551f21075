"""Producer over an ``aiokafka.AIOKafkaProducer``."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from pydantic import BaseModel

from dispytch.emitter.producer import Outgoing, Producer, ProducerTimeout
from dispytch.errors import EmitError, InvalidTopicError
from dispytch.kafka import _compat
from dispytch.kafka.config import KafkaEventConfig  # also importable from here, as in 0.10
from dispytch.kafka.topics import check_topic
from dispytch.topic_rules import KAFKA
from dispytch.untrusted import loggable

__all__ = ["KafkaEventConfig", "KafkaProducer", "record_key"]

Partitioner = Callable[[bytes, list[int], list[int]], int]

#: Enqueue locks, striped by topic: bounded memory, and a topic waiting for metadata (or for
#: buffer space) holds up only the topics that share its stripe.
_STRIPES = 64
#: From this many records, ``send_many`` frames record batches itself.
_BATCH_MIN = 16
#: Seconds an emit waits for a topic it has no metadata for before it fails (unless given).
DEFAULT_METADATA_TIMEOUT = 5.0
#: Topic names remembered as valid (so each is checked once); forgotten past this many.
_VALID_TOPICS = 4096
#: ``(key, timestamp_ms, headers)`` of a record framed by ``send_many``.
_Fields = tuple[bytes | None, int | None, list[tuple[str, bytes]] | None]


def record_key(value: Any) -> bytes | None:
    """A partition key as record key bytes: ``bytes`` as is, ``str`` as UTF-8, else ``str()``."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return str(value).encode()


class KafkaProducer(Producer):
    """Sends events with an ``AIOKafkaProducer``; ``send`` returns once Kafka acknowledged.

    Seed style, with a producer you built (started or not; an unstarted one is started on the
    first send and then stopped by :meth:`close`)::

        producer = AIOKafkaProducer(bootstrap_servers="localhost:9092", acks="all",
                                    enable_idempotence=True)
        await producer.start()
        emitter = EventEmitter(KafkaProducer(producer))

    Concurrent sends are pipelined into the client's batches; each returns after its own ack.
    An event's ``KafkaEventConfig`` (or any config with these fields) sets the record key
    (``partition_key``), ``partition``, ``timestamp_ms`` and extra ``headers``.

    A topic name Kafka would refuse (empty, ``.``/``..``, over 249 characters, a character
    outside ``[a-zA-Z0-9._-]``) raises :class:`~dispytch.errors.InvalidTopicError` before
    anything is sent. A topic the client has no metadata for is waited for at most
    ``metadata_timeout`` seconds (the broker creates it then, if it auto-creates topics); after
    that the emit raises :class:`~dispytch.errors.EmitError` saying the topic does not exist.
    That wait holds up no emit to another topic.
    """

    topic_rules = KAFKA

    def __init__(
        self, producer: AIOKafkaProducer, *, metadata_timeout: float = DEFAULT_METADATA_TIMEOUT
    ) -> None:
        self.producer = producer
        self.metadata_timeout = metadata_timeout
        self._owns = False
        self._running = False
        # Read once: None (another aiokafka) makes send_many append record by record.
        self._partitioner = _compat.partitioner(producer)
        self._start_lock = asyncio.Lock()
        self._enqueue = [asyncio.Lock() for _ in range(_STRIPES)]
        self._valid: set[str] = set()

    def _started(self) -> bool:
        if not self._running:
            # Cannot tell (another aiokafka): a client handed over is taken as started.
            self._running = _compat.producer_started(self.producer) is not False
        return self._running

    async def start(self) -> None:
        """Start the client if nobody has; this producer then owns (and stops) it."""
        async with self._start_lock:
            if not self._started():
                await self.producer.start()
                self._owns = self._running = True

    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None:
        (error,) = await self.send_many([Outgoing(topic, payload, config, key, headers)])
        if error is not None:
            raise error

    async def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Send every record, then wait for all their acks.

        A batch of at least 16 records is framed by this producer, one record batch per
        partition (the client's partitioner picks the partition of a keyed record; unkeyed
        records of one call share one partition), which costs a fraction of one ``send`` per
        record. Smaller ones are appended to the client's own batches.
        """
        refused = await self._check_topics(messages)
        if refused:
            results: list[BaseException | None] = [refused.get(m.topic) for m in messages]
            sendable = [(i, m) for i, m in enumerate(messages) if results[i] is None]
            if sendable:
                sent = await self.send_many([m for _, m in sendable])
                for (i, _), outcome in zip(sendable, sent, strict=True):
                    results[i] = outcome
            return results
        partitioner = self._partitioner
        if len(messages) < _BATCH_MIN or partitioner is None:
            return await self._send_each(messages)
        return await self._send_batches(messages, partitioner)

    async def _check_topics(self, messages: Sequence[Outgoing]) -> dict[str, EmitError]:
        """The topics of ``messages`` that cannot be sent to, with the error for each.

        Checks each new topic name once, and waits (boundedly, outside any lock) for the
        metadata of a topic the client does not know yet.
        """
        valid = self._valid
        refused: dict[str, EmitError] = {}
        new: list[str] = []
        last = None
        for message in messages:
            topic = message.topic
            if topic is last or topic in valid or topic in refused or topic in new:
                continue
            last = topic
            try:
                check_topic(topic)
            except InvalidTopicError as exc:
                refused[topic] = exc
                continue
            new.append(topic)
        if (new or not refused) and not self._started():
            await self.start()
        cluster = self.producer.client.cluster
        for topic in new:
            if cluster.partitions_for_topic(topic) is None:
                try:
                    await asyncio.wait_for(
                        self.producer.partitions_for(topic), self.metadata_timeout
                    )
                except (TimeoutError, KafkaError) as exc:
                    _compat.forget_topic(self.producer.client, topic)
                    refused[topic] = _unknown_topic(topic, self.metadata_timeout, exc)
                    continue
            if len(valid) >= _VALID_TOPICS:
                valid.clear()
            valid.add(topic)
        return refused

    async def send_record(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        """Send one record with raw header values (dead letters keep them byte for byte)."""
        await self.send(topic, value, _RawHeaders(headers), key=key)

    async def _send_each(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        deliveries: list[asyncio.Future[Any] | BaseException] = []
        for message in messages:
            try:
                deliveries.append(await self._append(message))
            except KafkaError as exc:
                deliveries.append(_emit_error(message.topic, exc))
        results: list[BaseException | None] = []
        for message, delivery in zip(messages, deliveries, strict=True):
            if isinstance(delivery, BaseException):
                results.append(delivery)
                continue
            try:
                await delivery
            except KafkaError as exc:
                results.append(_emit_error(message.topic, exc))
            else:
                results.append(None)
        return results

    async def _send_batches(
        self, messages: Sequence[Outgoing], partitioner: Partitioner
    ) -> list[BaseException | None]:
        results: list[BaseException | None] = [None] * len(messages)
        # (topic, partition) -> indexes of its records, in call order.
        groups: dict[tuple[str, int], list[int]] = {}
        # The records with a config or headers: index -> (key, timestamp_ms, headers). The
        # others (most) take their key from the message and have neither.
        fields: dict[int, _Fields] = {}
        # topic -> (every partition, the available ones, the one for unkeyed records)
        layouts: dict[str, tuple[list[int], list[int], int]] = {}
        last: tuple[str, int] | None = None
        indexes: list[int] = []
        layout_topic: str | None = None
        every: list[int] = []
        available: list[int] = []
        unkeyed = 0
        for i, (topic, _, config, key, headers) in enumerate(messages):
            partition: int | None = None
            if config is not None or headers:
                key, partition, timestamp_ms, record_headers = _record_fields(messages[i])
                fields[i] = (key, timestamp_ms, record_headers)
            try:
                if topic is not layout_topic:
                    layout = layouts.get(topic)
                    if layout is None:
                        layout = layouts[topic] = await self._layout(topic)
                    every, available, unkeyed = layout
                    layout_topic = topic
                if partition is None:
                    # Where the client's own partitioner puts a keyed record.
                    partition = unkeyed if key is None else partitioner(key, every, available)
                elif partition not in every:
                    raise KafkaError(f"topic {topic!r} has no partition {partition}")
            except KafkaError as exc:
                results[i] = _emit_error(topic, exc)
                continue
            if last is None or last[1] != partition or last[0] != topic:
                last = (topic, partition)
                indexes = groups.setdefault(last, [])
            indexes.append(i)
        deliveries: list[tuple[list[int], asyncio.Future[Any] | BaseException]] = []
        for (topic, partition), group in groups.items():
            async with self._enqueue[hash(topic) % _STRIPES]:
                deliveries += await self._submit(topic, partition, group, messages, fields)
        for chunk, delivery in deliveries:
            error: BaseException | None = None
            if isinstance(delivery, BaseException):
                error = delivery
            else:
                try:
                    await delivery
                except KafkaError as exc:
                    error = _emit_error(messages[chunk[0]].topic, exc)
            if error is not None:
                for i in chunk:
                    results[i] = error
        return results

    async def _layout(self, topic: str) -> tuple[list[int], list[int], int]:
        """``topic``'s partitions, the available ones, and the one partition this call gives
        its unkeyed records (Kafka's sticky partitioning)."""
        every = sorted(await self.producer.partitions_for(topic))
        cluster = self.producer.client.cluster
        available = sorted(cluster.available_partitions_for_topic(topic) or every)
        return every, available, random.choice(available)

    async def _submit(
        self,
        topic: str,
        partition: int,
        indexes: list[int],
        messages: Sequence[Outgoing],
        fields: dict[int, _Fields],
    ) -> list[tuple[list[int], asyncio.Future[Any] | BaseException]]:
        """Frame the records of one partition into record batches and hand them to the client."""
        out: list[tuple[list[int], asyncio.Future[Any] | BaseException]] = []
        create = self.producer.create_batch
        builder: Any = None
        chunk: list[int] = []
        for i in indexes:
            _, payload, _, key, _ = messages[i]
            extra = fields.get(i) if fields else None
            if extra is None:
                timestamp_ms, headers = None, None
            else:
                key, timestamp_ms, headers = extra
            while True:
                if builder is None:
                    builder = create()
                appended = builder.append(
                    timestamp=timestamp_ms, key=key, value=payload, headers=headers
                )
                if appended is not None:
                    chunk.append(i)
                    break
                if not chunk:  # does not fit even an empty batch
                    out.append(([i], _emit_error(topic, MessageSizeTooLargeError())))
                    builder = None
                    break
                out.append((chunk, await self._hand_over(builder, topic, partition)))
                builder, chunk = None, []
        if chunk:
            out.append((chunk, await self._hand_over(builder, topic, partition)))
        return out

    async def _hand_over(
        self, builder: Any, topic: str, partition: int
    ) -> asyncio.Future[Any] | BaseException:
        builder.close()
        try:
            delivery: asyncio.Future[Any] = await self.producer.send_batch(
                builder, topic, partition=partition
            )
        except KafkaError as exc:
            return _emit_error(topic, exc)
        return delivery

    async def _append(self, message: Outgoing) -> asyncio.Future[Any]:
        key, partition, timestamp_ms, headers = _record_fields(message)
        if partition is not None and partition not in (
            self.producer.client.cluster.partitions_for_topic(message.topic) or ()
        ):
            # aiokafka would fail an assertion; say it as send_many's batches do.
            raise KafkaError(f"topic {message.topic!r} has no partition {partition}")
        # ``send`` only appends to a batch, so concurrent callers share round trips; the
        # returned future resolves with this record's own acknowledgement. One caller at a
        # time appends: when a batch is full, aiokafka wakes *every* waiting caller, and
        # thousands of concurrent emits would otherwise crawl (~40x slower).
        async with self._enqueue[hash(message.topic) % _STRIPES]:
            delivery: asyncio.Future[Any] = await self.producer.send(
                message.topic,
                message.payload,
                key=key,
                partition=partition,
                timestamp_ms=timestamp_ms,
                headers=headers,
            )
        return delivery

    async def close(self) -> None:
        """Flush and stop the client if this producer started it."""
        if self._owns:
            self._owns = self._running = False
            await self.producer.stop()


def _record_fields(
    message: Outgoing,
) -> tuple[bytes | None, int | None, int | None, list[tuple[str, bytes]] | None]:
    """``(key, partition, timestamp_ms, headers)`` of one record (``None``: no headers)."""
    config, key = message.config, message.key
    partition: int | None = None
    timestamp_ms: int | None = None
    headers: list[tuple[str, bytes]] | None = None
    if isinstance(config, _RawHeaders):
        return key, None, None, list(config.headers) or None
    if config is not None:
        if key is None:
            key = record_key(getattr(config, "partition_key", None))
        partition = getattr(config, "partition", None)
        timestamp_ms = getattr(config, "timestamp_ms", None)
        extra: Mapping[str, str | bytes] | None = getattr(config, "headers", None)
        if extra:
            headers = [
                (k, v if isinstance(v, bytes) else str(v).encode()) for k, v in extra.items()
            ]
    if message.headers:
        headers = (headers or []) + [(k, v.encode()) for k, v in message.headers.items()]
    return key, partition, timestamp_ms, headers


class _RawHeaders(BaseModel):
    """A record's headers as ``(name, bytes)`` pairs, sent as they are."""

    headers: list[tuple[str, bytes]]

    def __init__(self, headers: Sequence[tuple[str, bytes]]) -> None:
        super().__init__(headers=list(headers))


def _unknown_topic(topic: str, timeout: float, exc: BaseException) -> EmitError:
    error = EmitError(
        f"Kafka topic {loggable(topic)!r} does not exist (no metadata for it within "
        f"{timeout:g}s{'' if isinstance(exc, TimeoutError) else f': {type(exc).__name__}'}); "
        "create it (kafka-topics.sh --create), enable auto.create.topics.enable on the broker, "
        "or raise metadata_timeout if the cluster is slow"
    )
    error.__cause__ = exc
    return error


def _emit_error(topic: str, exc: KafkaError) -> EmitError:
    error: EmitError
    if isinstance(exc, KafkaTimeoutError):
        error = ProducerTimeout(
            f"Kafka did not acknowledge a record for topic {topic!r} in time ({exc!r}); "
            "it may or may not be stored. Check the broker, or raise request_timeout_ms"
        )
    else:
        error = EmitError(
            f"Kafka refused a record for topic {topic!r}: {type(exc).__name__}: {exc}. "
            "Check that the topic exists (or auto-creation is on) and the client may write it"
        )
    error.__cause__ = exc
    return error
