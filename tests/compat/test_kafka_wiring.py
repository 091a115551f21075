"""Kafka wired the way the 0.10 documentation wires it (issue 11, item 1).

The 0.10 docs start the aiokafka consumer themselves, then, in the same coroutine, hand it to
``EventListener(KafkaConsumer(consumer))`` and ``await listener.listen()``. That must receive
events whether the topic exists yet or not, from the beginning or only new ones.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest

from dispytch import Event, EventListener, HandlerGroup
from tests.helpers import require_broker

aiokafka = pytest.importorskip("aiokafka")

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from dispytch.kafka import KafkaConsumer  # noqa: E402

pytestmark = pytest.mark.timeout(90)

SERVERS = "127.0.0.1:9092"


@pytest.fixture(autouse=True)
def _live() -> None:
    require_broker("kafka", 9092)


def envelope(n: int) -> bytes:
    return json.dumps(
        {"id": str(uuid.uuid4()), "type": "user_registered", "body": {"n": n}, "timestamp": 1}
    ).encode()


@pytest.mark.parametrize("topic_exists", [True, False], ids=["topic-exists", "no-topic-yet"])
@pytest.mark.parametrize("offset_reset", ["earliest", "latest"])
async def test_start_the_consumer_then_listen_in_the_same_coroutine(
    topic_exists: bool, offset_reset: str
) -> None:
    topic = f"compat_{uuid.uuid4().hex[:10]}"
    producer = AIOKafkaProducer(bootstrap_servers=SERVERS)
    await producer.start()
    if topic_exists:
        await producer.send_and_wait(topic, envelope(0))

    user_events = HandlerGroup()
    seen: list[int] = []

    @user_events.handler(topic=topic, event="user_registered")
    async def handle_user_registered(event: Event[dict[str, Any]]) -> None:
        seen.append(event.body["n"])

    async def service() -> None:
        # What the 0.10 docs show, in one coroutine, nothing in between.
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=SERVERS,
            group_id=f"g_{topic}",
            enable_auto_commit=False,
            auto_offset_reset=offset_reset,
        )
        await consumer.start()
        event_listener = EventListener(KafkaConsumer(consumer))
        event_listener.add_handler_group(user_events)
        listeners.append(event_listener)
        try:
            await event_listener.listen()
        finally:
            await consumer.stop()

    listeners: list[EventListener] = []
    task = asyncio.create_task(service())
    try:
        # Emit until the service handles one of these (with "latest" the first ones may land
        # before the consumer has a position); fail after the deadline or if listen() ends.
        deadline = time.monotonic() + 60
        n = 1
        while not [x for x in seen if x >= 1]:
            assert not task.done(), (
                f"listen() ended: {task.exception() if not task.cancelled() else 'cancelled'}"
            )
            assert time.monotonic() < deadline, f"nothing handled; seen {seen}"
            await producer.send_and_wait(topic, envelope(n))
            n += 1
            for _ in range(20):
                if [x for x in seen if x >= 1] or task.done():
                    break
                await asyncio.sleep(0.025)
    finally:
        for listener in listeners:
            listener.stop()
        await asyncio.wait_for(asyncio.shield(task), 30)
        await producer.stop()
    if topic_exists and offset_reset == "earliest":
        assert seen[0] == 0  # the event written before the consumer started
