"""0.10 services end to end on the live brokers, wired as 0.10 wired them: clients the user
built, a `def` handler with a sync dependency, a `{segment}` or a `*` topic. (Kafka's
start-then-listen wiring is tested with the Kafka backend.)"""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from pydantic import BaseModel

from dispytch import (
    Dependency,
    Event,
    EventBase,
    EventEmitter,
    EventListener,
    HandlerGroup,
    TopicSegment,
)
from tests.helpers import eventually, require_broker, wait_until


class Signup(BaseModel):
    email: str


class UserSignedUp(EventBase):
    __topic__ = "signups.{region}.users"
    __event_type__ = "user_signed_up"

    region: str
    email: str


WELCOMED: list[tuple[str, str]] = []


def get_outbox() -> list[tuple[str, str]]:
    return WELCOMED


def signup_handlers(topic: str) -> HandlerGroup:
    group = HandlerGroup(default_event="user_signed_up")
    if "{region}" in topic:

        @group.handler(topic=topic)
        def welcome(
            event: Event[Signup],
            outbox: Annotated[list[tuple[str, str]], Dependency(get_outbox)],
            region: Annotated[str, TopicSegment],
        ) -> None:
            outbox.append((region, event.body.email))

    else:  # a '*' topic binds no segment: the region is in the topic

        @group.handler(topic=topic)
        def welcome_any(
            event: Event[Signup], outbox: Annotated[list[tuple[str, str]], Dependency(get_outbox)]
        ) -> None:
            outbox.append((event.topic.split(":")[1], event.body.email))

    return group


async def _emit_and_welcome(
    listener: EventListener,
    emitter: EventEmitter,
    event: EventBase,
    ready: Callable[[], Awaitable[bool]],
) -> None:
    """Listen, emit once ``ready``, wait for the welcome, stop."""
    listening = asyncio.create_task(listener.listen())
    await eventually(ready, "the subscription")
    await emitter.emit(event)
    await wait_until(lambda: len(WELCOMED) == 1, timeout=20, what="the welcome")
    listener.stop()
    await asyncio.wait_for(listening, 20)


async def test_rabbitmq_wired_as_in_0_10() -> None:
    require_broker("rabbitmq", 5672)
    import aio_pika

    from dispytch.rabbitmq import RabbitMQConsumer, RabbitMQProducer

    WELCOMED.clear()
    uid = uuid.uuid4().hex[:8]
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            f"compat_{uid}", aio_pika.ExchangeType.TOPIC, auto_delete=True
        )
        queue = await channel.declare_queue(f"compat_{uid}", auto_delete=True)
        await queue.bind(exchange, "signups.*.users")

        listener = EventListener(RabbitMQConsumer(queue), topic_delimiter=".")
        listener.add_handler_group(signup_handlers("signups.{region}.users"))
        emitter = EventEmitter(RabbitMQProducer(exchanges=[exchange], timeout=5))

        async def nothing_to_wait_for() -> bool:
            return True

        await _emit_and_welcome(
            listener,
            emitter,
            UserSignedUp(region="eu", email="ann@example.com"),
            nothing_to_wait_for,
        )
    finally:
        await connection.close()
    assert WELCOMED == [("eu", "ann@example.com")]


async def test_redis_pubsub_wired_as_in_0_10() -> None:
    require_broker("redis", 6379)
    from redis.asyncio import Redis

    from dispytch.redis import RedisConsumer, RedisProducer

    WELCOMED.clear()
    uid = uuid.uuid4().hex[:8]
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    pubsub = redis.pubsub()
    try:
        await pubsub.psubscribe(f"signups_{uid}:*:users")
        listener = EventListener(RedisConsumer(pubsub))
        listener.add_handler_group(signup_handlers(f"signups_{uid}:*:users"))
        emitter = EventEmitter(RedisProducer(redis))

        class Signed(UserSignedUp):
            __topic__ = f"signups_{uid}:{{region}}:users"

        async def subscribed() -> bool:  # Pub/Sub keeps nothing: publish once subscribed
            return int(await redis.pubsub_numpat()) > 0

        await _emit_and_welcome(
            listener, emitter, Signed(region="us", email="bob@example.com"), subscribed
        )
    finally:
        await pubsub.aclose()
        await redis.aclose()
    assert WELCOMED == [("us", "bob@example.com")]
