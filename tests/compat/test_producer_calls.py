"""Issue 11 item 5: ``Producer.send`` is called with keywords as 0.10 called it; positional-only
producers keep working; the convention is read once, when the emitter is built."""

from __future__ import annotations

import inspect
import json
from typing import Any

import pytest
from pydantic import BaseModel

from dispytch import EventBase, EventEmitter
from dispytch.emitter.producer import Producer


class ShippingConfig(BaseModel):
    partition_key: str | None = None


class OrderShipped(EventBase):
    __topic__ = "orders.{region}.shipped"
    __event_type__ = "order_shipped"
    __backend_config__ = ShippingConfig(partition_key="order-1")

    region: str
    order_id: int


def _sent(calls: list[dict[str, Any]]) -> list[tuple[str, int, Any]]:
    return [(c["topic"], json.loads(c["payload"])["body"]["order_id"], c["config"]) for c in calls]


EXPECTED = [
    ("orders.eu.shipped", 1, ShippingConfig(partition_key="order-1")),
    ("orders.us.shipped", 2, ShippingConfig(partition_key="order-1")),
]


async def _emit_both(emitter: EventEmitter) -> None:
    await emitter.emit(OrderShipped(region="eu", order_id=1))
    await emitter.emit_many([OrderShipped(region="us", order_id=2)])


async def test_a_0_10_keyword_only_producer() -> None:
    class KeywordProducer(Producer):
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        async def send(  # type: ignore[override]
            self, *, topic: str, payload: bytes, config: BaseModel | None = None
        ) -> None:
            self.calls.append({"topic": topic, "payload": payload, "config": config})

    producer = KeywordProducer()
    await _emit_both(EventEmitter(producer))
    assert _sent(producer.calls) == EXPECTED


async def test_a_0_10_producer_with_its_parameters_in_another_order() -> None:
    class ReorderedProducer(Producer):
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        async def send(  # type: ignore[override]
            self, payload: bytes, topic: str, config: BaseModel | None = None
        ) -> None:
            self.calls.append({"topic": topic, "payload": payload, "config": config})

    producer = ReorderedProducer()
    await _emit_both(EventEmitter(producer))
    assert _sent(producer.calls) == EXPECTED


async def test_a_0_10_producer_without_key_or_headers_also_with_emit_many() -> None:
    """0.10's own producers took (topic, payload, config): emit_many used to pass them
    ``headers=`` and ``key=`` through Producer.send_many."""

    class PlainProducer(Producer):
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        async def send(self, topic, payload, config=None):  # type: ignore[no-untyped-def, override]
            self.calls.append({"topic": topic, "payload": payload, "config": config})

    producer = PlainProducer()
    await _emit_both(EventEmitter(producer))
    assert _sent(producer.calls) == EXPECTED


async def test_a_duck_typed_producer_that_does_not_subclass_producer() -> None:
    class Duck:
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        async def send(self, *, topic: str, payload: bytes, config: Any = None) -> None:
            self.calls.append({"topic": topic, "payload": payload, "config": config})

    producer = Duck()
    await _emit_both(EventEmitter(producer))  # type: ignore[arg-type]
    assert _sent(producer.calls) == EXPECTED


@pytest.mark.parametrize("takes_key", [False, True])
async def test_a_positional_only_producer_keeps_working(takes_key: bool) -> None:
    calls: list[dict[str, Any]] = []

    class PositionalProducer(Producer):
        async def send(self, t, p, c=None, /):  # type: ignore[no-untyped-def, override]
            calls.append({"topic": t, "payload": p, "config": c})

    class PositionalWithKey(Producer):
        async def send(self, t, p, c=None, /, *, key=None):  # type: ignore[no-untyped-def, override]
            calls.append({"topic": t, "payload": p, "config": c, "key": key})

    producer = PositionalWithKey() if takes_key else PositionalProducer()
    await _emit_both(EventEmitter(producer))
    assert _sent(calls) == EXPECTED
    if takes_key:
        assert [c["key"] for c in calls] == [b"order-1", b"order-1"]


async def test_key_and_headers_go_by_keyword_to_a_producer_that_takes_them() -> None:
    calls: list[dict[str, Any]] = []

    class Modern(Producer):
        async def send(  # type: ignore[override]
            self, *, topic: str, payload: bytes, config: Any = None, key: Any = None, **rest: Any
        ) -> None:
            calls.append({"topic": topic, "payload": payload, "config": config, "key": key})

    await EventEmitter(Modern()).emit(OrderShipped(region="eu", order_id=1))
    assert [(c["topic"], c["key"]) for c in calls] == [("orders.eu.shipped", b"order-1")]


async def test_the_signature_is_read_once_not_per_emit(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[object] = []
    real = inspect.signature

    def counting(obj: Any, *args: Any, **kwargs: Any) -> inspect.Signature:
        reads.append(obj)
        return real(obj, *args, **kwargs)

    class KeywordProducer(Producer):
        async def send(  # type: ignore[override]
            self, *, topic: str, payload: bytes, config: BaseModel | None = None
        ) -> None: ...

    monkeypatch.setattr(inspect, "signature", counting)
    emitter = EventEmitter(KeywordProducer())
    built = len(reads)
    for n in range(20):
        await emitter.emit(OrderShipped(region="eu", order_id=n))
    await emitter.emit_many(OrderShipped(region="eu", order_id=n) for n in range(20))
    assert built >= 1
    assert len(reads) == built


def test_a_standard_producer_is_called_directly_others_through_an_adapter() -> None:
    from dispytch.emitter.calling import send_caller
    from dispytch.memory import MemoryBroker, MemoryProducer

    class KeywordOnly(Producer):
        async def send(self, *, topic: str, payload: bytes, config: Any = None) -> None: ...  # type: ignore[override]

    assert send_caller(MemoryProducer(MemoryBroker()).send) is None
    assert send_caller(KeywordOnly().send) is not None
