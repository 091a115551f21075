"""Every use of aiokafka's private state, in one place.

Verified on aiokafka **0.14.0** (``aiokafka.consumer.consumer``, ``fetcher``,
``subscription_state``, ``group_coordinator`` and ``producer.producer`` of that release). Each
function checks what it touches and, when the client looks different, returns its documented
fallback instead of guessing. ``tests/unit/test_kafka_compat.py`` pins the verified path and the
fallbacks without a broker; ``tests/backends/test_compat_fallbacks.py`` runs a consumer and a
producer on every fallback against a live broker; CI runs the Kafka tests against the newest
aiokafka release too (``.ci/run``, "newest clients").

What it is used for, and what happens on the fallback:

* :func:`consumer_started`, :func:`producer_started`: whether a client someone else built
  was started already (``_fetcher`` / ``_sender.sender_task``). Fallback: whether the client
  has cluster metadata (public ``partitions_for_topic`` / ``client.cluster``), which only a
  started client has.
* :func:`auto_commit_enabled`: warn about ``enable_auto_commit=True``. Fallback: no warning.
* :func:`subscription`: the subscription a user made (pattern, whether partitions are
  assigned by the group, its rebalance listener, the wait for the first assignment).
  Fallback: the public ``subscription()`` topics and nothing else: no rebalance listener is
  added to a subscription the user made (revoked partitions are then not committed first:
  still at-least-once, with more redeliveries after a rebalance).
* :func:`partitioner`: the client's partitioner, so ``send_many`` frames each keyed record
  into the partition ``send`` would pick. Fallback: ``None``; ``send_many`` then appends
  record by record through ``send`` (the client partitions; slower, same placement).
* :func:`set_rebalance_listener`: give a running, subscribed consumer our commit-on-revoke
  listener without subscribing again (re-subscribing a running consumer makes aiokafka's fetch
  task fail an assertion and stop delivering). Fallback: ``False``, the caller re-subscribes.
* :func:`forget_topic`: drop a topic whose metadata wait failed from the topics the client
  keeps asking about. Fallback: nothing (aiokafka keeps logging that it is not found).
* :func:`fetcher_error`: aiokafka's background fetch task died (``getmany`` then returns
  nothing forever). Fallback: ``None`` (the failure stays invisible, as with plain aiokafka).
* :func:`committed`: the committed offset *and its metadata* of partitions (where the
  delivery attempts of records are kept across processes). Fallback: ``None`` (no counting).
* :func:`ready_partitions`, :func:`position`, :func:`failed_partition`, :func:`fetch_raw`: when
  aiokafka cannot parse a record (a header name that is not UTF-8, say) its ``getmany`` raises
  and, left alone, silently skips the records before it (and those it had taken from other
  partitions in the same call) and fails again on every fetch. These let the consumer drain
  one partition per call, find the partition that failed and read its raw bytes, which
  :mod:`dispytch.kafka.records` parses leniently. Fallbacks: every assigned partition, and
  ``None``; the consumer then stops with an error instead of losing records.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = [
    "RawFetch",
    "UserSubscription",
    "auto_commit_enabled",
    "committed",
    "consumer_started",
    "failed_partition",
    "fetch_raw",
    "fetcher_error",
    "forget_topic",
    "partitioner",
    "position",
    "producer_started",
    "ready_partitions",
    "set_rebalance_listener",
    "subscription",
]

logger = logging.getLogger("dispytch.kafka")

#: The aiokafka versions the private access below was checked against.
VERIFIED_VERSIONS = ("0.14.0",)
#: ``max_partition_fetch_bytes`` of aiokafka (the raw re-fetch's size when it cannot be read).
_DEFAULT_FETCH_BYTES = 1 << 20


def private(obj: Any, name: str) -> Any:
    """``obj``'s private attribute ``name``, ``None`` when it has none.

    Every read of aiokafka's private state in this module goes through here; the fallback
    tests replace it with one that finds nothing, which runs every fallback below.
    """
    return getattr(obj, name, None)


def consumer_started(consumer: AIOKafkaConsumer) -> bool:
    """Whether ``start()`` was called (aiokafka makes its fetcher there). Fallback: whether
    the client has the metadata of a subscribed topic (``start()`` waits for it), from the
    public ``partitions_for_topic``; a consumer subscribed by pattern only, or not at all, is
    taken as not started."""
    if private(consumer, "_fetcher") is not None:
        return True
    return any(consumer.partitions_for_topic(t) is not None for t in consumer.subscription())


def producer_started(producer: Any) -> bool:
    """Whether ``start()`` was called: the sender's task runs. Fallback: whether the client
    knows any broker (it bootstrapped), from the public ``client.cluster``."""
    sender = private(producer, "_sender")
    if sender is not None and hasattr(sender, "sender_task"):
        return sender.sender_task is not None
    cluster = getattr(getattr(producer, "client", None), "cluster", None)
    return bool(cluster is not None and cluster.brokers())


def auto_commit_enabled(consumer: AIOKafkaConsumer) -> bool:
    """``enable_auto_commit`` as given to the consumer (fallback: ``False``)."""
    return private(consumer, "_enable_auto_commit") is True


def partitioner(producer: Any) -> Callable[[bytes, list[int], list[int]], int] | None:
    """The producer's partitioner (``partitioner=`` or aiokafka's default), called as
    ``partitioner(key, all_partitions, available)``; ``None`` when it cannot be read."""
    found = private(producer, "_partitioner")
    return found if callable(found) else None


@dataclass(frozen=True, slots=True)
class UserSubscription:
    """What a consumer is subscribed to, as far as the client tells."""

    topics: frozenset[str]
    pattern: Any  # a compiled regex, or None
    #: partitions come from the group (``subscribe``), not from ``assign``
    auto_assigned: bool
    #: the rebalance listener given with the subscription (``None``: none, or unknown)
    listener: Any
    #: the subscription state whose ``wait_for_assignment()`` ends at the first assignment
    #: (``None`` on the fallback)
    state: Any

    @property
    def exists(self) -> bool:
        return bool(self.topics) or self.pattern is not None

    async def assigned(self) -> None:
        """Wait for the group's first assignment (returns at once on the fallback)."""
        if self.state is not None:
            await self.state.wait_for_assignment()


def subscription(consumer: AIOKafkaConsumer) -> UserSubscription:
    """The consumer's current subscription (see :class:`UserSubscription`)."""
    topics = frozenset(consumer.subscription())
    state = private(consumer, "_subscription")
    if state is None or not all(
        hasattr(state, name)
        for name in (
            "subscribed_pattern",
            "listener",
            "partitions_auto_assigned",
            "wait_for_assignment",
        )
    ):
        return UserSubscription(topics, None, False, None, None)
    return UserSubscription(
        topics,
        state.subscribed_pattern,
        bool(state.partitions_auto_assigned()),
        state.listener,
        state,
    )


def set_rebalance_listener(consumer: AIOKafkaConsumer, make: Callable[[Any], Any]) -> bool:
    """Replace the rebalance listener of a subscribed consumer by ``make(current_listener)``.

    aiokafka asks ``SubscriptionState.listener`` for the listener at every rebalance, so
    setting it keeps the subscription (and any assignment) as it is. Returns ``False`` when the
    consumer does not look like aiokafka 0.14's.
    """
    state = private(consumer, "_subscription")
    if state is None or not hasattr(type(state), "listener") or "_listener" not in dir(state):
        return False
    state._listener = make(state.listener)
    return True


def forget_topic(client: Any, topic: str) -> None:
    """Stop asking the cluster for the metadata of ``topic`` (added by a failed metadata wait;
    aiokafka would log "not found" at every refresh). Fallback: nothing."""
    topics = private(client, "_topics")
    if isinstance(topics, set):
        topics.discard(topic)


def fetcher_error(consumer: AIOKafkaConsumer) -> BaseException | None:
    """The error that ended aiokafka's background fetch task, if it ended with one."""
    fetcher = private(consumer, "_fetcher")
    task = getattr(fetcher, "error_future", None)
    if task is None or not hasattr(task, "done") or not task.done() or task.cancelled():
        return None
    error: BaseException | None = task.exception()
    if error is not None and error.__cause__ is not None:
        return error.__cause__  # aiokafka wraps it in a bare "Unexpected error" KafkaError
    return error


async def committed(
    consumer: AIOKafkaConsumer, partitions: Iterable[TopicPartition]
) -> dict[TopicPartition, tuple[int, str]] | None:
    """``{partition: (committed offset, metadata)}`` (offset -1: nothing committed)."""
    coordinator = private(consumer, "_coordinator")
    fetch = getattr(coordinator, "fetch_committed_offsets", None)
    if fetch is None or not inspect.iscoroutinefunction(fetch):
        return None
    found = await fetch(list(partitions))
    return {tp: (int(meta.offset), str(meta.metadata or "")) for tp, meta in found.items()}


def _position(result: Any, tp: TopicPartition) -> int | None:
    assignment = private(result, "_assignment")
    state = assignment.state_value(tp) if assignment is not None else None
    position = private(state, "_position")
    return position if isinstance(position, int) else None


def ready_partitions(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
    """The partitions whose fetched records ``getmany`` can hand out now (fallback: every
    assigned partition)."""
    records = private(private(consumer, "_fetcher"), "_records")
    if not isinstance(records, dict):
        return list(consumer.assignment())
    return list(records)


def position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The fetch position of ``tp`` (``None`` when it has none, or on the fallback)."""
    state = private(consumer, "_subscription")
    assignment = getattr(getattr(state, "subscription", None), "assignment", None)
    states = private(assignment, "_tp_state")
    found = private(states.get(tp), "_position") if isinstance(states, dict) else None
    return found if isinstance(found, int) else None


def failed_partition(consumer: AIOKafkaConsumer) -> tuple[TopicPartition, int] | None:
    """After ``getmany`` raised while unpacking records: the partition, and the offset from
    which its records were not handed out.

    The partition is the one whose record iterator (a generator) ended with the exception.
    """
    records = private(private(consumer, "_fetcher"), "_records")
    if not isinstance(records, dict):
        return None
    for tp, result in records.items():
        partition_records = private(result, "_partition_records")
        iterator = private(partition_records, "_records_iterator")
        if inspect.isgenerator(iterator) and inspect.getgeneratorstate(iterator) == "GEN_CLOSED":
            position = _position(result, tp)
            if position is not None:
                return tp, position
    return None


@dataclass(frozen=True, slots=True)
class RawFetch:
    """One partition's raw fetch response: record batches as the broker stores them."""

    data: bytes
    #: ``(producer id, first offset)`` of aborted transactions (read_committed only).
    aborted: tuple[tuple[int, int], ...]
    read_committed: bool


async def fetch_raw(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> RawFetch | None:
    """Fetch ``tp`` from ``offset`` with the consumer's connection and return the raw bytes
    (at most the consumer's ``max_partition_fetch_bytes``)."""
    from aiokafka.errors import for_code
    from aiokafka.protocol.fetch import FetchRequest

    max_bytes = private(consumer, "_max_partition_fetch_bytes")
    if not isinstance(max_bytes, int) or max_bytes <= 0:
        max_bytes = _DEFAULT_FETCH_BYTES
    client = private(consumer, "_client")
    fetcher = private(consumer, "_fetcher")
    cluster = getattr(client, "cluster", None)
    if client is None or fetcher is None or cluster is None:
        return None
    isolation = int(private(fetcher, "_isolation_level") or 0)
    leader = cluster.leader_for_partition(tp)
    if leader is None or leader < 0:
        return None
    request = FetchRequest(
        0, 1, max_bytes, isolation, [(tp.topic, [(tp.partition, offset, max_bytes)])]
    )
    response = await client.send(leader, request)
    for topic, partitions in response.topics:
        for partition, error_code, _highwater, *part_data in partitions:
            if topic != tp.topic or partition != tp.partition:
                continue
            error = for_code(error_code)
            if error_code:
                raise error()
            version = getattr(response, "API_VERSION", 0)
            aborted: Any = None
            if version >= 11:
                aborted = part_data[2]
            elif version >= 4:
                aborted = part_data[-2]
            return RawFetch(
                bytes(part_data[-1] or b""),
                tuple((int(p), int(o)) for p, o in (aborted or ())),
                isolation == 1,
            )
    return None
