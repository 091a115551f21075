"""Topic placeholder values: each rule on each backend's rules (pure), on emit through an App
(memory), Hypothesis over arbitrary strings, and the consume side (a delivered topic whose
segment breaks the rules is dead-lettered, not routed)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispytch import App, Event, EventBase, EventEmitter
from dispytch.errors import InvalidTopicError
from dispytch.memory import MemoryBroker
from dispytch.memory.backend import MemoryBackend
from dispytch.topic_rules import (
    GENERIC,
    KAFKA,
    MEMORY,
    NATS,
    RABBITMQ,
    REDIS,
    REDIS_STREAMS,
    TopicRules,
    check_segments,
)
from tests.helpers import wait_until

ALL = {
    "kafka": KAFKA,
    "rabbitmq": RABBITMQ,
    "redis": REDIS,
    "redis_streams": REDIS_STREAMS,
    "nats": NATS,
    "nats_core": NATS,
    "memory": MEMORY,
    "generic": GENERIC,
}

#: value -> the rule it breaks on every backend (None: fine everywhere).
COMMON = {
    "acme-42": None,
    "": "empty",
    "a b": "whitespace",
    "a\tb": "whitespace",
    "a\nfake log line": "whitespace",
    "a\x00b": "control",
    "a\x1bb": "control",
    "a\u202eb": "control",
    "a\u200bb": "control",
}

#: (backend, value) -> the rule it breaks there.
SPECIFIC = {
    ("kafka", "1.admin"): "delimiter",
    ("kafka", "1:admin"): "character",
    ("kafka", "a*b"): "character",
    ("kafka", "é"): "character",
    ("rabbitmq", "1.admin"): "delimiter",
    ("rabbitmq", "*"): "wildcard",
    ("rabbitmq", "#"): "wildcard",
    ("rabbitmq", "1:admin"): None,
    ("redis", "1:admin"): "delimiter",
    ("redis", "1.admin"): None,
    ("redis", "*"): "wildcard",
    ("redis", "?"): "wildcard",
    ("redis", "[a]"): "wildcard",
    ("redis_streams", "1:admin"): "delimiter",
    ("nats", "1.admin"): "delimiter",
    ("nats", "*"): "wildcard",
    ("nats", ">"): "wildcard",
    ("nats", "#"): None,
    ("memory", "1:admin"): "delimiter",
    ("memory", "1.admin"): None,
    ("generic", "1.admin"): "delimiter",
    ("generic", "1:admin"): "delimiter",
    ("generic", ">"): "wildcard",
}


def _broken(rules: TopicRules, value: str) -> str | None:
    try:
        rules.check_value("tenant", value)
    except InvalidTopicError as exc:
        assert exc.field == "tenant"
        assert "{tenant}" in str(exc)
        assert "\n" not in str(exc) and "\x00" not in str(exc)
        return exc.rule
    return None


@pytest.mark.parametrize("backend", sorted(ALL))
@pytest.mark.parametrize("value", sorted(COMMON))
def test_common_rules_on_every_backend(backend: str, value: str) -> None:
    assert _broken(ALL[backend], value) == COMMON[value]


@pytest.mark.parametrize(("backend", "value"), sorted(SPECIFIC))
def test_backend_specific_rules(backend: str, value: str) -> None:
    assert _broken(ALL[backend], value) == SPECIFIC[(backend, value)]


@pytest.mark.parametrize(
    ("rules", "limit", "unit_char"),
    [(KAFKA, 245, "a"), (RABBITMQ, 251, "é"), (NATS, 255, "é")],
)
def test_length_limits(rules: TopicRules, limit: int, unit_char: str) -> None:
    """Kafka counts characters; RabbitMQ and NATS count UTF-8 bytes."""
    width = len(unit_char.encode()) if rules.length_unit == "bytes" else 1
    prefix = "t."
    fits = unit_char * ((limit - len(prefix)) // width)
    rules.check_topic(prefix + fits, {"v": fits}, starts=None, ends="v")
    too_long = fits + unit_char
    with pytest.raises(InvalidTopicError) as caught:
        rules.check_topic(prefix + too_long, {"v": too_long}, starts=None, ends="v")
    assert (caught.value.rule, caught.value.field) == ("length", "v")


@pytest.mark.parametrize(
    ("rules", "topic", "starts", "ends"),
    [
        (NATS, "$JS.API.STREAM.DELETE.x", "a", None),
        (NATS, "_INBOX.abc.events", "a", None),
        (KAFKA, "__consumer_offsets", "a", "a"),
        (RABBITMQ, "amq.x.events", "a", None),
        (REDIS_STREAMS, "orders:x.dlq", None, "a"),
    ],
)
def test_reserved_names(rules: TopicRules, topic: str, starts: str, ends: str) -> None:
    with pytest.raises(InvalidTopicError) as caught:
        rules.check_topic(topic, {"a": "x"}, starts=starts, ends=ends)
    assert caught.value.rule == "reserved"


class RecordingBroker(MemoryBroker):
    """Remembers every topic published to."""

    def __init__(self) -> None:
        super().__init__()
        self.published: list[str] = []

    def publish(self, topic: str, payload: bytes, *args: Any, **kwargs: Any) -> Any:
        self.published.append(topic)
        return super().publish(topic, payload, *args, **kwargs)


class Tenant(EventBase):
    __topic__ = "tenant:{tenant_id}:events"
    __event_type__ = "created"
    tenant_id: str


class Numbered(EventBase):
    __topic__ = "n:{number}"
    __event_type__ = "n"
    number: int


async def test_emit_checks_before_anything_is_sent() -> None:
    broker = RecordingBroker()
    async with App("memory://", backend=MemoryBackend(broker=broker)) as app:
        for bad, rule in [("1:admin", "delimiter"), ("", "empty"), ("a\nb", "whitespace")]:
            with pytest.raises(InvalidTopicError) as caught:
                await app.emit(Tenant(tenant_id=bad))
            assert (caught.value.field, caught.value.rule) == ("tenant_id", rule)
            with pytest.raises(InvalidTopicError):
                await app.emit_many([Tenant(tenant_id="ok"), Tenant(tenant_id=bad)])
        await app.emit(Tenant(tenant_id="1.admin"))  # "." is no delimiter on memory
        await app.emit(Numbered(number=-5))  # formatted values are checked too
    assert broker.published == ["tenant:1.admin:events", "n:-5"]


async def test_seed_style_emitter_uses_the_producers_rules_or_the_generic_ones() -> None:
    backend = MemoryBackend(broker=MemoryBroker())
    assert EventEmitter(backend.producer()).topic_rules is MEMORY

    class Plain:  # a seed-era producer: send(topic, payload, config) only
        async def send(self, topic: str, payload: bytes, config: Any = None) -> None:
            raise AssertionError("nothing may be sent")

    emitter = EventEmitter(Plain())  # type: ignore[arg-type]
    assert emitter.topic_rules is GENERIC
    for bad in ("1.admin", "1:admin", "*"):
        with pytest.raises(InvalidTopicError):
            await emitter.emit(Tenant(tenant_id=bad))


async def test_app_rules_follow_a_custom_delimiter() -> None:
    app = App("memory://", topic_delimiter=".", backend=MemoryBackend(broker=MemoryBroker()))
    assert app.topic_rules.delimiters == "."
    with pytest.raises(InvalidTopicError):
        app.topic_rules.check_value("x", "a.b")
    app.topic_rules.check_value("x", "a:b")


def test_consumed_segments_are_checked() -> None:
    check_segments({"tenant": "acme"}, REDIS)
    for bad in ("*", "a b", "a\x00"):
        with pytest.raises(Exception, match="not routed"):
            check_segments({"tenant": bad}, REDIS)


async def test_a_delivered_topic_with_a_bad_segment_is_dead_lettered_not_routed() -> None:
    """A publisher on the broker (not a Dispytch emitter) wrote ``tenant:*:events``."""
    broker = MemoryBroker()
    app = App("memory://", backend=MemoryBackend(broker=broker), topic_delimiter=":")
    app.topic_rules = REDIS  # as on Redis, where '*' is a pattern character
    handled: list[str] = []

    @app.handler(topic="tenant:{tenant_id}:events", event="created")
    async def handle(event: Event[dict[str, Any]]) -> None:
        handled.append(event.topic)

    envelope = {"id": "1", "type": "created", "body": {"tenant_id": "x"}, "timestamp": 0}
    async with app:
        broker.publish("tenant:*:events", json.dumps(envelope).encode())
        broker.publish("tenant:good:events", json.dumps(envelope).encode())
        await wait_until(lambda: bool(handled), what="the good event")
        await wait_until(lambda: bool(broker.dead_letters("tenant:*:events")), what="dead letter")
    assert handled == ["tenant:good:events"]
    dead = broker.dead_letters("tenant:*:events")
    assert len(dead) == 1
    assert "validation" in json.dumps(dead[0].headers)


# -- Hypothesis: an emit raises InvalidTopicError or lands exactly where its pattern says ----


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.text(max_size=40))
def test_any_value_is_refused_or_lands_on_its_own_topic(value: str) -> None:
    asyncio.run(_land(value))


async def _land(value: str) -> None:
    broker = RecordingBroker()
    app = App("memory://", backend=MemoryBackend(broker=broker), group=uuid.uuid4().hex)
    seen: list[tuple[str, str]] = []

    @app.handler(topic="tenant:{tenant_id}:events", event="created")
    async def tenant(event: Event[dict[str, Any]]) -> None:
        seen.append(("tenant", event.body["tenant_id"]))

    @app.handler(topic="tenant:{tenant_id}:admin:events", event="created")
    async def admin(event: Event[dict[str, Any]]) -> None:
        seen.append(("admin", event.body["tenant_id"]))

    async with app:
        try:
            await app.emit(Tenant(tenant_id=value))
        except InvalidTopicError as exc:
            assert exc.field == "tenant_id" and exc.rule
            assert broker.published == []
            return
        await wait_until(lambda: bool(seen), timeout=5, what="the event")
    assert seen == [("tenant", value)]
    assert broker.published == [f"tenant:{value}:events"]


def test_remembered_clean_values_stay_bounded() -> None:
    rules = GENERIC.with_delimiter("/")  # a fresh rule set with its own memory
    for i in range(5000):
        rules.check({"v": f"value-{i}"}, f"t/value-{i}", None, "v")
    rules.check({"v": "x" * 1000}, "t/" + "x" * 1000, None, "v")
    assert 0 < len(rules._known) <= 4096
    assert "x" * 1000 not in rules._known
    with pytest.raises(InvalidTopicError):  # a bad value is never remembered as clean
        rules.check({"v": "a/b"}, "t/a/b", None, "v")
    with pytest.raises(InvalidTopicError):
        rules.check({"v": "a/b"}, "t/a/b", None, "v")
