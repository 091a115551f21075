"""EventBase (what services emit), its topic template, and Event (what handlers receive)."""

from typing import Any

import pytest
from pydantic import BaseModel, Field

from dispytch import Event, EventBase, RegistrationError
from dispytch.errors import EmitError, EventTemplateError
from dispytch.events import TopicTemplate


class KafkaLikeConfig(BaseModel):
    partition_key: str | None = None


class UserEvent(EventBase):
    __topic__ = "user:{user_id}:events"
    __event_type__ = "user_changed"
    __backend_config__ = KafkaLikeConfig(partition_key="class")

    user_id: int
    name: str = ""


def test_topic_placeholders_are_filled_from_fields() -> None:
    assert UserEvent(user_id=42).topic() == "user:42:events"


def test_literal_topic() -> None:
    class Plain(EventBase):
        __topic__ = "orders"
        __event_type__ = "placed"

    assert Plain().topic() == "orders"
    assert Plain.__topic_template__ is not None and Plain.__topic_template__.fields == ()


def test_several_placeholders_and_repeats() -> None:
    class Multi(EventBase):
        __topic__ = "{tenant}.{region}.{tenant}"
        __event_type__ = "x"
        tenant: str
        region: str

    assert Multi(tenant="acme", region="eu").topic() == "acme.eu.acme"


def test_missing_field_in_topic_raises_at_class_definition() -> None:
    with pytest.raises(EventTemplateError, match=r"uses \['user_id'\], which is not a field"):

        class Broken(EventBase):
            __topic__ = "user:{user_id}:events"
            __event_type__ = "x"
            name: str

    assert issubclass(EventTemplateError, EmitError)


@pytest.mark.parametrize(
    "topic", ["user:{user_id:>5}", "user:{user_id!r}", "user:{0}", "user:{}", "user:{a.b}"]
)
def test_placeholder_must_be_a_plain_field_name(topic: str) -> None:
    with pytest.raises(RegistrationError, match="placeholder must be a plain field name"):
        TopicTemplate(topic)


@pytest.mark.parametrize("topic", ["user:{user_id", "user:}"])
def test_malformed_topic(topic: str) -> None:
    with pytest.raises(RegistrationError, match="malformed"):
        TopicTemplate(topic)


def test_topic_must_be_a_string() -> None:
    with pytest.raises(RegistrationError, match="must be a str"):

        class Broken(EventBase):
            __topic__ = 5  # type: ignore[assignment]
            __event_type__ = "x"


def test_escaped_braces_are_literal() -> None:
    class Braces(EventBase):
        __topic__ = "a{{b}}"
        __event_type__ = "x"

    assert Braces().topic() == "a{b}"


def test_no_topic_or_type_says_what_to_set() -> None:
    class Bare(EventBase):
        pass

    with pytest.raises(EventTemplateError, match="set __topic__"):
        Bare().topic()
    with pytest.raises(EventTemplateError, match="set __event_type__"):
        Bare().event_type()


def test_subclass_inherits_topic_and_type() -> None:
    class Renamed(UserEvent):
        extra: str = "x"

    event = Renamed(user_id=7)
    assert (event.topic(), event.event_type()) == ("user:7:events", "user_changed")


def test_per_event_backend_config_overrides_the_class_one() -> None:
    assert UserEvent(user_id=1).backend_config == KafkaLikeConfig(partition_key="class")
    own = KafkaLikeConfig(partition_key="mine")
    event = UserEvent(user_id=1, __backend_config__=own)
    assert event.backend_config is own
    assert "__backend_config__" not in event.model_dump()
    assert UserEvent(user_id=2).backend_config == KafkaLikeConfig(partition_key="class")


def test_event_ids_are_unique_unless_given() -> None:
    ids = {UserEvent(user_id=1).id for _ in range(100)}
    assert len(ids) == 100
    assert UserEvent(id="fixed", user_id=1).id == "fixed"


def test_envelope_shape() -> None:
    event = UserEvent(id="e1", user_id=3, name="Ann")
    envelope = event.envelope(99)
    assert list(envelope) == ["id", "type", "body", "timestamp"]
    assert envelope == {
        "id": "e1",
        "type": "user_changed",
        "body": {"user_id": 3, "name": "Ann"},
        "timestamp": 99,
    }


def test_envelope_body_uses_field_aliases() -> None:
    class Aliased(EventBase):
        __topic__ = "t"
        __event_type__ = "x"
        user_name: str = Field(alias="userName")

    assert Aliased(userName="a").envelope(1)["body"] == {"userName": "a"}


def test_event_holds_what_a_handler_needs() -> None:
    event: Event[dict[str, Any]] = Event("e1", "placed", "orders", {"n": 1}, 5)
    assert (event.id, event.type, event.topic, event.body, event.timestamp) == (
        "e1",
        "placed",
        "orders",
        {"n": 1},
        5,
    )
    assert repr(event) == (
        "Event(id='e1', type='placed', topic='orders', timestamp=5, body={'n': 1})"
    )
    with pytest.raises(AttributeError):
        event.other = 1  # type: ignore[attr-defined]  # slots: no stray attributes
