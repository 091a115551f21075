"""Topic patterns, route lookup and typed topic segments."""

import re
from typing import Annotated

import pytest
from pydantic import BaseModel

from dispytch import Event, EventListener, HandlerGroup, RegistrationError, TopicSegment
from dispytch.memory import MemoryBroker
from dispytch.routing import _TOPIC_CACHE_SIZE, RouteTable, TopicPattern
from tests.unit.support import RecordingConsumer, deliver, envelope


class Body(BaseModel):
    n: int = 0


# -- TopicPattern ---------------------------------------------------------------------------------


def test_literal_topic_has_no_segments() -> None:
    pattern = TopicPattern.parse("orders")
    assert pattern.is_literal
    assert pattern.segments == ()
    assert pattern.raw == "orders"


def test_segments_are_named_in_order() -> None:
    pattern = TopicPattern.parse("tenant:{tenant}:user:{user_id}:events")
    assert not pattern.is_literal
    assert pattern.segments == ("tenant", "user_id")
    assert pattern.delimiter == ":"


@pytest.mark.parametrize("raw", ["user{id}:events", "user:{id}x:events", "user:{id:events", "a}"])
def test_placeholder_must_fill_a_whole_segment(raw: str) -> None:
    with pytest.raises(RegistrationError, match="mixes text and a placeholder"):
        TopicPattern.parse(raw)


def test_duplicate_segment_is_refused() -> None:
    with pytest.raises(RegistrationError, match=r"names \{a\} twice"):
        TopicPattern.parse("x:{a}:{a}")


@pytest.mark.parametrize("raw", ["", None, 3])
def test_empty_or_non_string_topic_is_refused(raw: object) -> None:
    with pytest.raises(RegistrationError, match="non-empty string"):
        TopicPattern.parse(raw)  # type: ignore[arg-type]


def test_glob_form() -> None:
    assert TopicPattern.parse("user:{user_id}:events").glob == "user:*:events"
    assert TopicPattern.parse("user.{user_id}.events", ".").glob == "user.*.events"
    assert TopicPattern.parse("orders").glob == "orders"


def test_regex_form_captures_one_segment() -> None:
    regex = re.compile(TopicPattern.parse("user:{user_id}:events").regex)
    match = regex.match("user:42:events")
    assert match is not None and match.groupdict() == {"user_id": "42"}
    assert regex.match("user:4:2:events") is None  # a placeholder never spans a delimiter
    # An empty segment is captured (the consumer's segment check then refuses it).
    assert regex.match("user::events").groupdict() == {"user_id": ""}  # type: ignore[union-attr]
    assert regex.match("user:42:events:more") is None  # anchored
    assert regex.match("xuser:42:events") is None


def test_regex_escapes_the_delimiter_and_literal_text() -> None:
    regex = re.compile(TopicPattern.parse("a+b.{id}.events", ".").regex)
    assert regex.match("a+b.7.events") is not None
    assert regex.match("a+bX7Xevents") is None
    assert regex.match("aab.7.events") is None


# -- RouteTable -----------------------------------------------------------------------------------


def test_lookup_literal_and_pattern_together() -> None:
    table: RouteTable[str] = RouteTable()
    table.add(TopicPattern.parse("user:42:events"), "created", "literal")
    table.add(TopicPattern.parse("user:{user_id}:events"), "created", "pattern")
    assert table.lookup("user:42:events", "created") == [
        ("literal", {}),
        ("pattern", {"user_id": "42"}),
    ]
    assert table.lookup("user:7:events", "created") == [("pattern", {"user_id": "7"})]
    assert table.lookup("user:7:events", "deleted") == []
    assert table.lookup("orders", "created") == []


def test_several_values_for_one_route_keep_registration_order() -> None:
    table: RouteTable[str] = RouteTable()
    for name in ("first", "second", "third"):
        table.add(TopicPattern.parse("orders"), "placed", name)
    table.add(TopicPattern.parse("orders"), "cancelled", "other")
    assert [v for v, _ in table.lookup("orders", "placed")] == ["first", "second", "third"]
    assert sorted(table.values()) == ["first", "other", "second", "third"]


def test_same_pattern_twice_is_one_subscription() -> None:
    table: RouteTable[str] = RouteTable()
    table.add(TopicPattern.parse("u:{id}"), "a", "x")
    table.add(TopicPattern.parse("u:{id}"), "b", "y")
    table.add(TopicPattern.parse("orders"), "a", "z")
    assert [p.raw for p in table.patterns()] == ["orders", "u:{id}"]  # literals first


def test_adding_a_route_invalidates_cached_lookups() -> None:
    table: RouteTable[str] = RouteTable()
    table.add(TopicPattern.parse("orders"), "placed", "a")
    assert table.lookup("user:1:events", "created") == []
    table.add(TopicPattern.parse("user:{id}:events"), "created", "b")
    assert table.lookup("user:1:events", "created") == [("b", {"id": "1"})]


def test_topic_cache_is_bounded() -> None:
    table: RouteTable[str] = RouteTable()
    table.add(TopicPattern.parse("user:{id}:events"), "created", "v")
    for i in range(_TOPIC_CACHE_SIZE * 2 + 10):
        assert table.lookup(f"user:{i}:events", "created") == [("v", {"id": str(i)})]
        assert len(table._cache) <= _TOPIC_CACHE_SIZE
    assert table.lookup("user:3:events", "created") == [("v", {"id": "3"})]


# -- typed topic segments through the listener -------------------------------------------------


async def _deliver(
    group: HandlerGroup, topic: str, *, expect_dead: int = 0, expect_acked: int = 1
) -> RecordingConsumer:
    consumer = await deliver(group, [(topic, envelope("created", {"n": 1}))], settled=expect_acked)
    assert len(consumer.dead) == expect_dead
    return consumer


async def test_segment_is_converted_to_the_annotated_type() -> None:
    got: list[object] = []
    group = HandlerGroup()

    @group.handler(topic="user:{user_id}:events", event="created")
    async def handle(event: Event[Body], user_id: Annotated[int, TopicSegment()]) -> None:
        got.append(user_id)

    await _deliver(group, "user:42:events")
    assert got == [42]


async def test_segment_default_value_style() -> None:
    got: list[object] = []
    group = HandlerGroup()

    @group.handler(topic="user:{user_id}:events", event="created")
    async def handle(user_id: int = TopicSegment()) -> None:
        got.append(user_id)

    await _deliver(group, "user:42:events")
    assert got == [42]


async def test_segment_without_annotation_is_a_string() -> None:
    got: list[object] = []
    group = HandlerGroup()

    @group.handler(topic="user:{user_id}:events", event="created")
    async def handle(user_id=TopicSegment()) -> None:  # type: ignore[no-untyped-def]  # noqa: B008
        got.append(user_id)

    await _deliver(group, "user:007:events")
    assert got == ["007"]


@pytest.mark.parametrize(
    "marker", [TopicSegment("user_id"), TopicSegment(validation_alias="user_id")]
)
async def test_segment_alias(marker: TopicSegment) -> None:
    got: list[object] = []
    group = HandlerGroup()

    @group.handler(topic="user:{user_id}:events", event="created")
    async def handle(uid: Annotated[int, marker]) -> None:
        got.append(uid)

    await _deliver(group, "user:5:events")
    assert got == [5]


async def test_segment_constraint_violation_is_dead_lettered_as_validation() -> None:
    got: list[object] = []
    group = HandlerGroup()

    @group.handler(topic="user:{user_id}:events", event="created", retries=3, retry_interval=0)
    async def handle(user_id: Annotated[int, TopicSegment(gt=0)]) -> None:
        got.append(user_id)

    consumer = await _deliver(group, "user:0:events", expect_dead=1)
    assert got == []
    message, failure = consumer.dead[0]
    assert failure.reason == "validation"
    assert failure.attempts == 1  # validation is never retried
    assert "user_id" in failure.error_message
    assert consumer.broker.dead_letters("user:0:events")[0].reason == "validation"
    assert message.topic == "user:0:events"


async def test_segment_of_the_wrong_type_is_dead_lettered_as_validation() -> None:
    group = HandlerGroup()

    @group.handler(topic="user:{user_id}:events", event="created")
    async def handle(user_id: Annotated[int, TopicSegment()]) -> None:
        raise AssertionError("must not run")

    consumer = await _deliver(group, "user:abc:events", expect_dead=1)
    assert consumer.dead[0][1].reason == "validation"
    assert "'abc'" in consumer.dead[0][1].error_message


def test_unknown_segment_name_fails_at_registration() -> None:
    group = HandlerGroup()
    with pytest.raises(RegistrationError, match=r"\{userid\}.*it has: user_id"):

        @group.handler(topic="user:{user_id}:events", event="created")
        async def handle(userid: Annotated[int, TopicSegment()]) -> None: ...

    with pytest.raises(RegistrationError, match=r"\{nope\}.*it has: none"):

        @group.handler(topic="orders", event="created")
        async def handle2(x: Annotated[int, TopicSegment(alias="nope")]) -> None: ...

    assert group.handlers == []


def test_bad_constraint_fails_at_registration() -> None:
    group = HandlerGroup()
    with pytest.raises(
        RegistrationError, match=r"unknown TopicSegment constraint.*not_a_constraint"
    ):

        @group.handler(topic="u:{id}", event="created")
        async def handle(id: Annotated[int, TopicSegment(not_a_constraint=1)]) -> None: ...


def test_topic_not_split_by_the_listener_delimiter_fails_when_added() -> None:
    group = HandlerGroup()

    @group.handler(topic="user.{user_id}.events", event="created")
    async def handle(user_id: Annotated[int, TopicSegment()]) -> None: ...

    listener = EventListener(RecordingConsumer(MemoryBroker()), topic_delimiter=":")
    with pytest.raises(RegistrationError, match="mixes text and a placeholder"):
        listener.add_handler_group(group)
    dotted = EventListener(RecordingConsumer(MemoryBroker()), topic_delimiter=".")
    dotted.add_handler_group(group)
    assert [p.glob for p in dotted.routes().patterns()] == ["user.*.events"]


async def test_handler_group_default_topic_with_segment() -> None:
    got: list[tuple[str, int]] = []
    group = HandlerGroup(default_topic="user:{user_id}:events", default_event="created")

    @group.handler()
    async def handle(event: Event[Body], user_id: Annotated[int, TopicSegment()]) -> None:
        got.append((event.topic, user_id))

    @group.handler(event="deleted")
    async def other(user_id: Annotated[int, TopicSegment()]) -> None:
        raise AssertionError("wrong event type")

    consumer = await _deliver(group, "user:9:events")
    assert got == [("user:9:events", 9)]
    assert [p.raw for p in consumer.subscriptions] == ["user:{user_id}:events"]


async def test_literal_and_pattern_handlers_both_run() -> None:
    got: list[str] = []
    group = HandlerGroup()

    @group.handler(topic="user:1:events", event="created")
    async def literal() -> None:
        got.append("literal")

    @group.handler(topic="user:{user_id}:events", event="created")
    async def pattern(user_id: Annotated[int, TopicSegment()]) -> None:
        got.append(f"pattern {user_id}")

    await _deliver(group, "user:1:events")
    assert sorted(got) == ["literal", "pattern 1"]
