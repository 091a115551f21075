"""Retry policy (pure) and how the listener applies it."""

import pytest

from dispytch import EventListener, HandlerGroup, RegistrationError
from dispytch.memory import MemoryBroker
from dispytch.retry import RetryPolicy
from tests.helpers import wait_until
from tests.unit.support import RecordingConsumer, envelope, running

# -- building -------------------------------------------------------------------------------------


def test_defaults_retry_nothing() -> None:
    policy = RetryPolicy.build()
    assert policy.retries == 0
    assert policy.attempts == 1
    assert policy.retry_on == (Exception,)
    assert not policy.should_retry(ValueError(), 1)


def test_retry_on_a_single_class() -> None:
    assert RetryPolicy.build(2, ValueError).retry_on == (ValueError,)


@pytest.mark.parametrize("kinds", [[ValueError, KeyError], (ValueError, KeyError)])
def test_retry_on_several_classes(kinds: object) -> None:
    assert RetryPolicy.build(2, kinds).retry_on == (ValueError, KeyError)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retries": -1}, "retries must be an int >= 0"),
        ({"retries": 1.5}, "retries must be an int >= 0"),
        ({"retries": True}, "retries must be an int >= 0"),
        ({"retries": "3"}, "retries must be an int >= 0"),
        ({"retry_on": int}, "retry_on must be an exception class"),
        ({"retry_on": [ValueError, "KeyError"]}, "retry_on must be an exception class"),
        ({"retry_on": ValueError()}, "retry_on must be an exception class"),
        ({"retry_interval": -0.1}, "retry_interval and max_retry_interval must be >= 0"),
        ({"retry_interval": "1"}, "retry_interval and max_retry_interval must be >= 0"),
        ({"retry_interval": float("nan")}, "retry_interval and max_retry_interval must be >= 0"),
        ({"max_retry_interval": -1}, "retry_interval and max_retry_interval must be >= 0"),
        ({"max_retry_interval": float("inf")}, "retry_interval and max_retry_interval"),
        ({"backoff": "linear"}, "backoff must be 'fixed' or 'exponential'"),
        ({"jitter": 1.5}, "jitter must be between 0 and 1"),
        ({"jitter": -0.1}, "jitter must be between 0 and 1"),
        ({"jitter": "0.5"}, "jitter must be between 0 and 1"),
        ({"jitter": float("nan")}, "jitter must be between 0 and 1"),
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RegistrationError, match=message):
        RetryPolicy.build(**kwargs)  # type: ignore[arg-type]


def test_bad_values_are_refused_at_handler_registration() -> None:
    group = HandlerGroup()
    with pytest.raises(RegistrationError, match="retries"):

        @group.handler(topic="t", event="e", retries=-1)
        async def handle() -> None: ...


# -- which failures retry -------------------------------------------------------------------------


def test_should_retry_counts_attempts_and_matches_subclasses() -> None:
    policy = RetryPolicy.build(2, (LookupError, ValueError))
    assert policy.attempts == 3
    assert policy.should_retry(KeyError(), 1)  # subclass of LookupError
    assert policy.should_retry(ValueError(), 2)
    assert not policy.should_retry(ValueError(), 3)  # the last attempt
    assert not policy.should_retry(TypeError(), 1)


# -- delays ---------------------------------------------------------------------------------------


def test_fixed_delay() -> None:
    policy = RetryPolicy.build(5, retry_interval=0.5)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5] * 5


def test_exponential_delay_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy.build(8, retry_interval=1.0, backoff="exponential", max_retry_interval=10)
    assert [policy.delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_exponential_delay_with_a_huge_attempt_stays_capped() -> None:
    policy = RetryPolicy.build(2000, retry_interval=1.0, backoff="exponential")
    assert policy.delay(1000) == 60.0


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 0.75), (0.5, 1.0), (1.0, 1.25)])
def test_jitter_bounds(rand: float, expected: float) -> None:
    policy = RetryPolicy.build(1, retry_interval=1.0, jitter=0.25)
    assert policy.delay(1, rand=lambda: rand) == pytest.approx(expected)


def test_jitter_applies_after_the_cap() -> None:
    policy = RetryPolicy.build(
        9, retry_interval=1.0, backoff="exponential", max_retry_interval=4, jitter=0.5
    )
    assert policy.delay(6, rand=lambda: 0.0) == pytest.approx(2.0)
    assert policy.delay(6, rand=lambda: 1.0) == pytest.approx(6.0)


def test_jitter_uses_random_by_default_within_bounds() -> None:
    policy = RetryPolicy.build(1, retry_interval=2.0, jitter=0.5)
    delays = {policy.delay(1) for _ in range(200)}
    assert all(1.0 <= d <= 3.0 for d in delays)
    assert len(delays) > 1


# -- in the listener ------------------------------------------------------------------------------


async def _run(group: HandlerGroup) -> RecordingConsumer:
    broker = MemoryBroker()
    consumer = RecordingConsumer(broker)
    listener = EventListener(consumer)
    listener.add_handler_group(group)
    async with running(listener):
        broker.publish("orders", envelope("placed", {}))
        await wait_until(lambda: consumer.settled == 1, timeout=5, what="settle")
    return consumer


async def test_retry_on_exception_retries_until_success() -> None:
    calls = 0
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed", retries=3, retry_on=ValueError, retry_interval=0)
    async def handle() -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ValueError("flaky")

    consumer = await _run(group)
    assert calls == 3
    assert len(consumer.acked) == 1
    assert consumer.dead == []


async def test_retries_exhausted_dead_letters_with_attempt_count() -> None:
    calls = 0
    group = HandlerGroup()

    @group.handler(
        topic="orders", event="placed", retries=2, retry_on=[KeyError, ValueError], retry_interval=0
    )
    async def handle() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("always")

    consumer = await _run(group)
    assert calls == 3
    (failure,) = [f for _, f in consumer.dead]
    assert (failure.reason, failure.attempts, failure.error_type) == ("handler", 3, "ValueError")
    assert len(consumer.acked) == 1  # acked only after it was dead-lettered


async def test_non_matching_exception_dead_letters_after_one_attempt() -> None:
    calls = 0
    group = HandlerGroup()

    @group.handler(topic="orders", event="placed", retries=5, retry_on=ValueError, retry_interval=0)
    async def handle() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("not retryable")

    consumer = await _run(group)
    assert calls == 1
    (failure,) = [f for _, f in consumer.dead]
    assert (failure.reason, failure.attempts, failure.error_type) == ("handler", 1, "KeyError")
    dead = consumer.broker.dead_letters("orders")
    assert [d.attempts for d in dead] == [1]
