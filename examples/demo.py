"""Demo: an example service on the in-memory backend, with events flowing end to end.

    python examples/demo.py

It wires the seed README's two examples (``seed_emit.py`` and ``seed_handle.py``) into an App,
adds an order handler with a typed topic segment, a retried flaky dependency and a poison
event, emits a few events, waits until everything is settled and prints what happened.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Annotated

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pydantic import BaseModel
from seed_emit import example_emit
from seed_handle import user_events
from service import get_user_service

from dispytch import App, Dependency, Event, EventBase, HandlerGroup, TopicSegment
from dispytch.testing import TestClient

app = App("memory://demo", group="demo")
app.add_handler_group(user_events)

orders = HandlerGroup()
_flaky_calls = {"n": 0}


class OrderPlaced(EventBase):
    __topic__ = "shop:{shop_id}:orders"
    __event_type__ = "order_placed"

    shop_id: int
    order_id: int
    amount_cents: int


class OrderBody(BaseModel):
    order_id: int
    amount_cents: int


def payment_gateway() -> str:
    """A dependency that fails twice, then works: the handler's retries absorb it."""
    _flaky_calls["n"] += 1
    if _flaky_calls["n"] <= 2:
        raise ConnectionError("payment gateway not reachable (simulated)")
    return "gateway-ok"


@orders.handler(
    topic="shop:{shop_id}:orders",
    event="order_placed",
    retries=3,
    retry_on=ConnectionError,
    retry_interval=0.05,
)
async def charge_order(
    event: Event[OrderBody],
    shop_id: Annotated[int, TopicSegment(gt=0)],
    gateway: Annotated[str, Dependency(payment_gateway)],
) -> None:
    if event.body.amount_cents < 0:
        raise ValueError(f"order {event.body.order_id} has a negative amount")
    print(f"[Order Charged] shop {shop_id} order {event.body.order_id} via {gateway}")


app.add_handler_group(orders)


async def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout
    )
    async with TestClient(app) as client:
        await example_emit(app.emitter)  # the seed README's emit example, unchanged
        await client.emit(OrderPlaced(shop_id=7, order_id=1, amount_cents=1250))
        await client.emit(OrderPlaced(shop_id=7, order_id=2, amount_cents=-5))  # poison
        await client.wait_idle(timeout=10)
        print()
        print(f"handled:       {len(client.handled)} event(s)")
        print(f"users stored:  {len(get_user_service().users)}")
        for dead in client.dead_letters:
            print(f"dead-lettered: {dead.topic} after {dead.attempts} attempt(s): {dead.error}")


if __name__ == "__main__":
    asyncio.run(main())
