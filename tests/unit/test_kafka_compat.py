"""aiokafka's private state, read through ``dispytch.kafka._compat`` only: the verified path on
the installed aiokafka, and every fallback (no broker needed: clients are built, not started)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

aiokafka = pytest.importorskip("aiokafka")

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from dispytch.kafka import _compat  # noqa: E402


@pytest.fixture
def no_private_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As with an aiokafka whose private attributes are all gone."""
    monkeypatch.setattr(_compat, "private", lambda obj, name: None)
    yield


@pytest.mark.private_access
async def test_verified_path_on_the_installed_aiokafka() -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", enable_auto_commit=True)
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    try:
        assert _compat.consumer_started(consumer) is False
        assert _compat.auto_commit_enabled(consumer) is True
        assert _compat.producer_started(producer) is False
        partitioner = _compat.partitioner(producer)
        assert partitioner is not None and partitioner(b"k", [0, 1, 2], [0, 1, 2]) in (0, 1, 2)
        consumer.subscribe(topics=["a", "b"])
        current = _compat.subscription(consumer)
        assert (current.topics, current.auto_assigned, current.pattern) == (
            frozenset({"a", "b"}),
            True,
            None,
        )
        assert current.state is not None
        assert _compat.set_rebalance_listener(consumer, lambda inner: ("wrapped", inner))
        assert _compat.subscription(consumer).listener[0] == "wrapped"
    finally:
        await producer.stop()
        await consumer.stop()


async def test_every_fallback(no_private_state: None) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", enable_auto_commit=True)
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    try:
        assert _compat.consumer_started(consumer) is False
        assert _compat.auto_commit_enabled(consumer) is False
        assert _compat.producer_started(producer) is False  # from the public cluster metadata
        assert _compat.partitioner(producer) is None
        consumer.subscribe(topics=["a"])
        current = _compat.subscription(consumer)
        assert (current.topics, current.auto_assigned, current.listener, current.state) == (
            frozenset({"a"}),
            False,
            None,
            None,
        )
        await current.assigned()  # returns at once
        assert _compat.set_rebalance_listener(consumer, lambda inner: inner) is False
        assert _compat.fetcher_error(consumer) is None
        assert await _compat.committed(consumer, []) is None
        assert _compat.failed_partition(consumer) is None
        assert _compat.ready_partitions(consumer) == list(consumer.assignment())
        assert await _compat.fetch_raw(consumer, _tp("a", 0), 0) is None
        _compat.forget_topic(producer.client, "a")
    finally:
        await producer.stop()
        await consumer.stop()


def _tp(topic: str, partition: int) -> Any:
    from aiokafka import TopicPartition

    return TopicPartition(topic, partition)
