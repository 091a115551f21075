"""Broker-delayed retries on the memory backend, and the pure header handling."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from dispytch import App, Event, EventBase
from dispytch.broker_retries import (
    RETRY_ATTEMPT_HEADER,
    RETRY_HANDLER_HEADER,
    RETRY_TOPIC_HEADER,
    retried_message,
    retry_destination,
    retry_headers,
)
from dispytch.errors import ConfigurationError, RegistrationError
from dispytch.listener.consumer import Message, Retried, RetryLater
from dispytch.memory import MemoryBackend, MemoryBroker
from tests.helpers import wait_until


class Job(EventBase):
    __topic__ = "jobs"
    __event_type__ = "run"
    n: int


def test_headers_round_trip_and_forged_attempts_are_bounded() -> None:
    message = Message("jobs", b"p", b"k", {"a": "1", "x-dispytch-retry-attempt": "99"})
    headers = retry_headers(message, RetryLater("h", 3, 1.5), 1000)
    assert headers["a"] == "1"
    assert headers[RETRY_ATTEMPT_HEADER] == "3"
    back = retried_message(Message(retry_destination("g"), b"p", b"k", headers))
    assert (back.topic, back.key, back.headers) == ("jobs", b"k", {"a": "1"})
    assert back.retry == Retried("h", 3)
    for forged, attempt in (("0", 2), ("-5", 2), ("x", 2), ("9" * 40, 2), ("12", 12)):
        forged_headers = {**headers, RETRY_ATTEMPT_HEADER: forged}
        got = retried_message(Message("r", b"", None, forged_headers)).retry
        assert got is not None and got.attempt == attempt
    # Without the topic header (not written by Dispytch) nothing changes: no handler matches.
    plain = Message("dispytch.retry.g", b"p", None, {RETRY_HANDLER_HEADER: "h"})
    assert retried_message(plain) is plain


def app_on(broker: MemoryBroker, **options: object) -> App:
    return App(
        backend=MemoryBackend("memory://", broker=broker),
        group="g",
        concurrency=1,
        **options,  # type: ignore[arg-type]
    )


async def test_slot_is_free_during_the_back_off_and_attempts_are_exact() -> None:
    broker = MemoryBroker()
    app = app_on(broker, retry_mode="broker")
    calls: list[tuple[int, float]] = []
    started = time.monotonic()

    @app.handler(topic="jobs", event="run", retries=2, retry_interval=0.5)
    async def run(event: Event[Job]) -> None:
        calls.append((event.body.n, time.monotonic() - started))
        if event.body.n == 0:
            raise ValueError("always fails")

    async with app:
        await app.emit(Job(n=0))
        await wait_until(lambda: len(calls) == 1, what="first attempt")
        await app.emit(Job(n=1))
        # concurrency=1: event 1 is handled while event 0 waits for its retry.
        await wait_until(lambda: any(n == 1 for n, _ in calls), what="the other event")
        assert [n for n, _ in calls] == [0, 1]
        await broker.wait_idle(timeout=10)
    attempts = [at for n, at in calls if n == 0]
    assert len(attempts) == 3  # exactly retries + 1, then the dead letter
    assert attempts[1] - attempts[0] >= 0.45 and attempts[2] - attempts[1] >= 0.45
    letters = broker.dead_letters("jobs")
    assert len(letters) == 1
    assert letters[0].attempts == 3 and (letters[0].handler or "").endswith(".run")
    assert letters[0].headers["x-dispytch-original-topic"] == "jobs"


async def test_process_mode_stays_the_default() -> None:
    broker = MemoryBroker()
    app = app_on(broker)
    calls: list[int] = []

    @app.handler(topic="jobs", event="run", retries=1, retry_interval=0.3)
    async def run(event: Event[Job]) -> None:
        calls.append(event.body.n)
        if event.body.n == 0 and calls.count(0) == 1:
            raise ValueError("once")

    async with app:
        await app.emit(Job(n=0))
        await wait_until(lambda: calls == [0], what="first attempt")
        await app.emit(Job(n=1))
        await broker.wait_idle(timeout=10)
    assert calls == [0, 0, 1]  # the slot was held by the retry: order kept
    assert broker.records(retry_destination("g")) == []


async def test_forged_retry_in_the_retry_topic_runs_at_most_once() -> None:
    broker = MemoryBroker()
    app = app_on(broker, retry_mode="broker")
    calls: list[int] = []

    @app.handler(topic="jobs", event="run", retries=3, retry_interval=0.05)
    async def run(event: Event[Job]) -> None:
        calls.append(event.body.n)
        raise ValueError("fails")

    envelope = json.dumps({"id": "x", "type": "run", "body": {"n": 7}, "timestamp": 1})
    async with app:
        broker.publish(
            retry_destination("g"),
            envelope.encode(),
            headers={
                RETRY_TOPIC_HEADER: "jobs",
                RETRY_HANDLER_HEADER: run.__qualname__,
                RETRY_ATTEMPT_HEADER: "1000000",
            },
        )
        await broker.wait_idle(timeout=10)
    assert calls == [7]  # clamped to the last attempt: dead-lettered after one run
    assert broker.dead_letters("jobs")[0].attempts == 4


async def test_only_the_failed_handler_runs_again() -> None:
    broker = MemoryBroker()
    app = app_on(broker, retry_mode="broker")
    calls: list[str] = []

    @app.handler(topic="jobs", event="run", retries=1, retry_interval=0.05)
    async def ok(event: Event[Job]) -> None:
        calls.append("ok")

    @app.handler(topic="jobs", event="run", retries=1, retry_interval=0.05)
    async def flaky(event: Event[Job]) -> None:
        calls.append("flaky")
        if calls.count("flaky") == 1:
            raise ValueError("once")

    async with app:
        await app.emit(Job(n=1))
        await broker.wait_idle(timeout=10)
    assert sorted(calls) == ["flaky", "flaky", "ok"]
    assert broker.dead_letters("jobs") == []


async def test_a_final_failure_and_a_retry_of_one_event() -> None:
    broker = MemoryBroker()
    app = app_on(broker, retry_mode="broker")
    calls: list[str] = []

    @app.handler(topic="jobs", event="run")  # no retries: dead-lettered at once
    async def final(event: Event[Job]) -> None:
        calls.append("final")
        raise KeyError("no")

    @app.handler(topic="jobs", event="run", retries=1, retry_interval=0.05)
    async def flaky(event: Event[Job]) -> None:
        calls.append("flaky")
        if calls.count("flaky") == 1:
            raise ValueError("once")

    async with app:
        await app.emit(Job(n=1))
        await broker.wait_idle(timeout=10)
    assert sorted(calls) == ["final", "flaky", "flaky"]
    letters = broker.dead_letters("jobs")
    assert [(d.handler or "").rsplit(".", 1)[-1] for d in letters] == ["final"]


async def test_handler_level_mode_overrides_the_app() -> None:
    broker = MemoryBroker()
    app = app_on(broker)  # process by default
    calls: list[int] = []

    @app.handler(topic="jobs", event="run", retries=1, retry_interval=0.05, retry_mode="broker")
    async def run(event: Event[Job]) -> None:
        calls.append(event.body.n)
        if len(calls) == 1:
            raise ValueError("once")

    async with app:
        await app.emit(Job(n=1))
        await broker.wait_idle(timeout=10)
    assert calls == [1, 1]
    assert len(broker.records(retry_destination("g"))) == 1


def test_bad_mode_is_refused_at_registration() -> None:
    app = App("memory://")
    with pytest.raises(RegistrationError, match="retry_mode"):
        app.handler(topic="jobs", event="run", retry_mode="later")  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="retry_mode"):
        App("memory://", retry_mode="sometimes")  # type: ignore[arg-type]


async def test_a_consumer_without_broker_retries_is_refused_at_start() -> None:
    from dispytch.listener.listener import EventListener
    from dispytch.memory import MemoryConsumer

    class Plain(MemoryConsumer):
        supports_broker_retries = False

    listener = EventListener(Plain(MemoryBroker(), "g"), retry_mode="broker")

    @listener.handler(topic="jobs", event="run", retries=1)
    async def run(event: Event[Job]) -> None: ...

    with pytest.raises(ConfigurationError, match="retry_mode='process'"):
        await listener.subscribe()


async def test_counted_deliveries_allow_for_broker_retries() -> None:
    """A broker whose delivery count includes the retries (JetStream) is not cut off by
    max_deliveries before the policy's attempts are spent."""
    from dispytch.listener.listener import EventListener
    from dispytch.memory import MemoryConsumer

    attempts: list[int] = []

    class Counting(MemoryConsumer):
        async def retry_later(self, message, retries):  # type: ignore[no-untyped-def]
            # Redeliver the same message with a higher count, as a nak with a delay does.
            await self.ack(message)
            attempt = message.delivery_attempt + 1
            redelivered = Message(
                message.topic,
                message.payload,
                None,
                {},
                attempt,
                retry=Retried(None, attempt, counted=True),
            )
            self._queue.put_nowait(redelivered)

    broker = MemoryBroker()
    consumer = Counting(broker, "g")
    consumer._queue = asyncio.Queue()  # type: ignore[attr-defined]
    listener = EventListener(consumer, retry_mode="broker", max_deliveries=2)

    @listener.handler(topic="jobs", event="run", retries=3, retry_interval=0.01)
    async def run(event: Event[Job]) -> None:
        raise ValueError("fails")

    await listener.subscribe()
    envelope = json.dumps({"id": "x", "type": "run", "body": {"n": 1}, "timestamp": 1}).encode()
    from dispytch.listener.pipeline import Pipeline
    from dispytch.listener.settle import Settler

    settler = Settler(consumer, dead_letter_producer=None)
    routes = listener._compiled
    assert routes is not None
    stored: list[int] = []

    async def dead_letter(message, failure):  # type: ignore[no-untyped-def]
        stored.append(failure.attempts)
        return True

    consumer.dead_letter = dead_letter  # type: ignore[method-assign]
    pipeline = Pipeline(
        routes,
        listener.deserializer,
        settler,
        max_deliveries=2,
        topic_rules=listener.topic_rules,
        on_fatal=lambda exc: None,
        broker_retries=3,
    )
    message = Message("jobs", envelope, None, {}, 1)
    while True:
        attempts.append(message.delivery_attempt)
        await pipeline.run(message)
        if stored:
            break
        message = consumer._queue.get_nowait()  # type: ignore[attr-defined]
    assert attempts == [1, 2, 3, 4]
    assert stored == [4]


def test_kafka_retry_topics_are_legal_and_never_matched_by_patterns() -> None:
    pytest.importorskip("aiokafka")
    import re

    from dispytch.kafka.consumer import _tier_for
    from dispytch.kafka.subscription import subscription_for
    from dispytch.kafka.topics import check_topic, retry_topic
    from dispytch.routing import TopicPattern

    assert retry_topic("billing", 1200) == "dispytch.retry.billing.1200ms"
    odd = retry_topic("bill ing/€" * 40, 57000)
    check_topic(odd)
    assert odd.startswith("dispytch.retry.") and odd.endswith(".57000ms")
    sub = subscription_for([TopicPattern.parse("{a}.{b}.{c}", ".")])
    assert sub.pattern is not None
    assert re.match(sub.pattern, "orders.eu.created")
    assert not re.match(sub.pattern, "dispytch.retry.billing")
    tiers = {1000: "a", 4000: "b"}
    assert [_tier_for(tiers, ms) for ms in (10, 1000, 3999, 4000, 90000)] == [
        1000,
        1000,
        1000,
        4000,
        4000,
    ]
