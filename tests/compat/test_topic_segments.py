"""Issue 11 item 3: the ``TopicSegment`` forms of Dispytch 0.10."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import AliasChoices, BaseModel, Field

from dispytch import Event, HandlerGroup, RegistrationError, TopicSegment
from tests.unit.support import RecordingConsumer, deliver, envelope


class Reading(BaseModel):
    value: float


async def _route(group: HandlerGroup, topic: str) -> RecordingConsumer:
    """Deliver one 'reading' event on ``topic`` to a 0.10-style listener ('.' delimited)."""
    return await deliver(group, [(topic, envelope("reading", {"value": 1.5}))], topic_delimiter=".")


async def test_the_bare_class_works_as_an_instance() -> None:
    got: list[Any] = []
    sensors = HandlerGroup(default_event="reading")

    @sensors.handler(topic="sensors.{site}.{sensor_id}")
    async def on_reading(
        event: Event[Reading],
        site: Annotated[str, TopicSegment],
        sensor_id: Annotated[int, TopicSegment],
    ) -> None:
        got.append((site, sensor_id, event.body.value))

    await _route(sensors, "sensors.lab.17")
    assert got == [("lab", 17, 1.5)]


async def test_the_bare_class_still_validates_against_the_annotation() -> None:
    sensors = HandlerGroup(default_event="reading")

    @sensors.handler(topic="sensors.{sensor_id}")
    async def on_reading(sensor_id: Annotated[int, TopicSegment]) -> None:
        raise AssertionError("must not run")

    consumer = await _route(sensors, "sensors.not-a-number")
    assert [f.reason for _, f in consumer.dead] == ["validation"]


async def test_validation_alias_wins_over_alias() -> None:
    got: list[Any] = []
    sensors = HandlerGroup(default_event="reading")

    @sensors.handler(topic="sensors.{site}.{sensor_id}")
    async def on_reading(
        which: Annotated[int, TopicSegment(alias="site", validation_alias="sensor_id")],
    ) -> None:
        got.append(which)

    await _route(sensors, "sensors.lab.17")
    assert got == [17]


async def test_alias_alone_and_validation_alias_alone() -> None:
    got: list[Any] = []
    sensors = HandlerGroup(default_event="reading")

    @sensors.handler(topic="sensors.{site}.{sensor_id}")
    async def on_reading(
        where: Annotated[str, TopicSegment(alias="site")],
        number: int = TopicSegment(validation_alias="sensor_id"),
    ) -> None:
        got.append((where, number))

    await _route(sensors, "sensors.lab.17")
    assert got == [("lab", 17)]


@pytest.mark.parametrize(
    ("annotation", "accepted", "refused"),
    [
        (Annotated[int, TopicSegment(gt=0, le=100)], "17", "101"),
        (Annotated[str, TopicSegment(min_length=2, max_length=4)], "lab", "l"),
        (Annotated[str, TopicSegment(pattern=r"^[a-z]+$")], "lab", "Lab1"),
        (Annotated[int, TopicSegment, Field(multiple_of=5)], "15", "17"),
        (Annotated[int, Field(ge=10), TopicSegment()], "10", "9"),
        (Annotated[float, TopicSegment(allow_inf_nan=False)], "2e3", "inf"),
    ],
    ids=["gt-le", "length", "pattern", "class+Field", "Field+instance", "allow_inf_nan"],
)
async def test_field_constraints_keep_working(annotation: Any, accepted: str, refused: str) -> None:
    got: list[Any] = []
    sensors = HandlerGroup(default_event="reading")

    async def on_reading(key: Any) -> None:
        got.append(key)

    on_reading.__annotations__["key"] = annotation
    sensors.handler(topic="sensors.{key}")(on_reading)
    await _route(sensors, f"sensors.{accepted}")
    assert len(got) == 1
    consumer = await _route(sensors, f"sensors.{refused}")
    assert len(got) == 1
    assert [f.reason for _, f in consumer.dead] == ["validation"]


def test_an_alias_that_is_not_a_name_is_refused_at_registration() -> None:
    sensors = HandlerGroup(default_event="reading")
    with pytest.raises(RegistrationError, match="alias must be a segment name"):

        @sensors.handler(topic="sensors.{site}")
        async def on_reading(
            site: Annotated[str, TopicSegment(validation_alias=AliasChoices("site"))],  # type: ignore[arg-type]
        ) -> None: ...
