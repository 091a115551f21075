"""Every use of aiokafka's private state, in one place.

Verified on aiokafka **0.14.0** (``aiokafka.consumer.fetcher``, ``subscription_state`` and
``group_coordinator`` of that release). Each function checks what it touches and, when the
client looks different, returns its documented fallback instead of guessing; the tests in
``tests/unit/test_kafka_compat.py`` pin both the verified path and the fallbacks.

What it is used for, and what happens on the fallback:

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
    "committed",
    "failed_partition",
    "fetch_raw",
    "fetcher_error",
    "forget_topic",
    "position",
    "ready_partitions",
    "set_rebalance_listener",
]

logger = logging.getLogger("dispytch.kafka")

#: The aiokafka versions the private access below was checked against.
VERIFIED_VERSIONS = ("0.14.0",)


def set_rebalance_listener(consumer: AIOKafkaConsumer, make: Callable[[Any], Any]) -> bool:
    """Replace the rebalance listener of a subscribed consumer by ``make(current_listener)``.

    aiokafka asks ``SubscriptionState.listener`` for the listener at every rebalance, so
    setting it keeps the subscription (and any assignment) as it is. Returns ``False`` when the
    consumer does not look like aiokafka 0.14's.
    """
    state = getattr(consumer, "_subscription", None)
    if state is None or not hasattr(type(state), "listener") or "_listener" not in dir(state):
        return False
    state._listener = make(state.listener)
    return True


def forget_topic(client: Any, topic: str) -> None:
    """Stop asking the cluster for the metadata of ``topic`` (added by a failed metadata wait;
    aiokafka would log "not found" at every refresh). Fallback: nothing."""
    topics = getattr(client, "_topics", None)
    if isinstance(topics, set):
        topics.discard(topic)


def fetcher_error(consumer: AIOKafkaConsumer) -> BaseException | None:
    """The error that ended aiokafka's background fetch task, if it ended with one."""
    fetcher = getattr(consumer, "_fetcher", None)
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
    coordinator = getattr(consumer, "_coordinator", None)
    fetch = getattr(coordinator, "fetch_committed_offsets", None)
    if fetch is None or not inspect.iscoroutinefunction(fetch):
        return None
    found = await fetch(list(partitions))
    return {tp: (int(meta.offset), str(meta.metadata or "")) for tp, meta in found.items()}


def _position(result: Any, tp: TopicPartition) -> int | None:
    assignment = getattr(result, "_assignment", None)
    state = assignment.state_value(tp) if assignment is not None else None
    position = getattr(state, "_position", None)
    return position if isinstance(position, int) else None


def ready_partitions(consumer: AIOKafkaConsumer) -> list[TopicPartition]:
    """The partitions whose fetched records ``getmany`` can hand out now (fallback: every
    assigned partition)."""
    records = getattr(getattr(consumer, "_fetcher", None), "_records", None)
    if not isinstance(records, dict):
        return list(consumer.assignment())
    return list(records)


def position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The fetch position of ``tp`` (``None`` when it has none, or on the fallback)."""
    state = getattr(consumer, "_subscription", None)
    assignment = getattr(getattr(state, "subscription", None), "assignment", None)
    states = getattr(assignment, "_tp_state", None)
    found = getattr(states.get(tp), "_position", None) if isinstance(states, dict) else None
    return found if isinstance(found, int) else None


def failed_partition(consumer: AIOKafkaConsumer) -> tuple[TopicPartition, int] | None:
    """After ``getmany`` raised while unpacking records: the partition, and the offset from
    which its records were not handed out.

    The partition is the one whose record iterator (a generator) ended with the exception.
    """
    records = getattr(getattr(consumer, "_fetcher", None), "_records", None)
    if not isinstance(records, dict):
        return None
    for tp, result in records.items():
        partition_records = getattr(result, "_partition_records", None)
        iterator = getattr(partition_records, "_records_iterator", None)
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


async def fetch_raw(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, max_bytes: int = 1 << 20
) -> RawFetch | None:
    """Fetch ``tp`` from ``offset`` with the consumer's connection and return the raw bytes."""
    from aiokafka.errors import for_code
    from aiokafka.protocol.fetch import FetchRequest

    client = getattr(consumer, "_client", None)
    fetcher = getattr(consumer, "_fetcher", None)
    cluster = getattr(client, "cluster", None)
    if client is None or fetcher is None or cluster is None:
        return None
    isolation = int(getattr(fetcher, "_isolation_level", 0) or 0)
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
