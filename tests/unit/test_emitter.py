"""EventEmitter: topics, backend configs, timeouts and emit_many, against fake producers."""

import asyncio
import json
from collections.abc import Mapping
from typing import Any

import pytest
from pydantic import BaseModel

from dispytch import EmitError, EventBase, EventEmitter
from dispytch.emitter.producer import Producer, ProducerTimeout
from dispytch.memory import MemoryBroker, MemoryProducer
from dispytch.serialization.msgpack import MessagePackDeserializer, MessagePackSerializer


class KeyConfig(BaseModel):
    partition_key: str | None = None


class UserEvent(EventBase):
    __topic__ = "user:{user_id}:events"
    __event_type__ = "user_changed"
    __backend_config__ = KeyConfig(partition_key="class-key")

    user_id: int


class Plain(EventBase):
    __topic__ = "orders"
    __event_type__ = "placed"
    n: int = 0


class RecordingProducer(Producer):
    def __init__(self, fail: dict[int, BaseException] | None = None) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail or {}

    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None:
        index = len(self.sent)
        self.sent.append({"topic": topic, "payload": payload, "config": config, "key": key})
        await asyncio.sleep(0)
        if index in self.fail:
            raise self.fail[index]


async def test_topic_placeholders_are_filled_and_class_config_is_passed() -> None:
    producer = RecordingProducer()
    event = UserEvent(user_id=42)
    await EventEmitter(producer).emit(event)
    (sent,) = producer.sent
    assert sent["topic"] == "user:42:events"
    assert sent["config"] == KeyConfig(partition_key="class-key")
    assert sent["key"] == b"class-key"
    decoded = json.loads(sent["payload"])
    assert decoded["id"] == event.id
    assert decoded["type"] == "user_changed"
    assert decoded["body"] == {"user_id": 42}
    assert isinstance(decoded["timestamp"], int)


async def test_per_event_backend_config_overrides_the_class_one() -> None:
    producer = RecordingProducer()
    own = KeyConfig(partition_key="event-key")
    await EventEmitter(producer).emit(UserEvent(user_id=1, __backend_config__=own))
    await EventEmitter(producer).emit(UserEvent(user_id=2))
    assert [(s["config"], s["key"]) for s in producer.sent] == [
        (own, b"event-key"),
        (KeyConfig(partition_key="class-key"), b"class-key"),
    ]


async def test_no_config_means_no_key() -> None:
    producer = RecordingProducer()
    await EventEmitter(producer).emit(Plain())
    assert (producer.sent[0]["config"], producer.sent[0]["key"]) == (None, None)


async def test_seed_style_producer_without_key_parameter() -> None:
    calls: list[tuple[Any, ...]] = []

    class SeedProducer(Producer):
        async def send(self, topic, payload, config=None):  # type: ignore[no-untyped-def, override]
            calls.append((topic, payload, config))

    await EventEmitter(SeedProducer()).emit(UserEvent(user_id=5))
    assert [(t, c) for t, _, c in calls] == [
        ("user:5:events", KeyConfig(partition_key="class-key"))
    ]


async def test_timeout_without_callback_propagates() -> None:
    producer = RecordingProducer(fail={0: ProducerTimeout("no ack in 5s")})
    with pytest.raises(ProducerTimeout, match="no ack in 5s"):
        await EventEmitter(producer).emit(Plain())
    assert issubclass(ProducerTimeout, EmitError)
    assert issubclass(ProducerTimeout, TimeoutError)


@pytest.mark.parametrize("is_async", [False, True])
async def test_timeout_calls_the_callback_instead_of_raising(is_async: bool) -> None:
    timed_out: list[EventBase] = []
    emitter = EventEmitter(RecordingProducer(fail={0: ProducerTimeout("slow")}))

    if is_async:

        @emitter.on_timeout
        async def on_timeout(event: EventBase) -> None:
            await asyncio.sleep(0)
            timed_out.append(event)

    else:

        @emitter.on_timeout
        def on_timeout(event: EventBase) -> None:
            timed_out.append(event)

    event = Plain(n=1)
    await emitter.emit(event)
    assert timed_out == [event]


async def test_other_emit_errors_propagate_even_with_a_timeout_callback() -> None:
    emitter = EventEmitter(RecordingProducer(fail={0: EmitError("refused: no such topic")}))
    emitter.on_timeout(lambda event: None)
    with pytest.raises(EmitError, match="refused"):
        await emitter.emit(Plain())


async def test_emit_many_sends_all_with_one_timestamp() -> None:
    producer = RecordingProducer()
    events = [Plain(n=n) for n in range(5)]
    await EventEmitter(producer).emit_many(events)
    decoded = [json.loads(s["payload"]) for s in producer.sent]
    assert [d["id"] for d in decoded] == [e.id for e in events]
    assert [d["body"]["n"] for d in decoded] == list(range(5))
    assert len({d["timestamp"] for d in decoded}) == 1


async def test_emit_many_sends_everything_then_raises_the_first_failure() -> None:
    producer = RecordingProducer(fail={1: ProducerTimeout("first"), 3: EmitError("second")})
    with pytest.raises(ProducerTimeout, match="first"):
        await EventEmitter(producer).emit_many(Plain(n=n) for n in range(5))
    assert len(producer.sent) == 5


async def test_emit_many_of_nothing() -> None:
    producer = RecordingProducer()
    await EventEmitter(producer).emit_many([])
    assert producer.sent == []


async def test_emit_through_memory_with_msgpack() -> None:
    broker = MemoryBroker()
    emitter = EventEmitter(MemoryProducer(broker), MessagePackSerializer())
    event = UserEvent(user_id=9)
    await emitter.emit(event)
    (record,) = broker.records("user:9:events")
    assert record.key == b"class-key"
    envelope = MessagePackDeserializer().deserialize(record.payload)
    assert (envelope.id, envelope.type, envelope.body) == (event.id, "user_changed", {"user_id": 9})
