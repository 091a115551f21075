"""An HTTP service that emits events and handles them: FastAPI and Dispytch in one process.

    pip install "dispytch[fastapi]" uvicorn
    cd examples && uvicorn fastapi_service:api --port 8000

``POST /orders`` emits ``OrderPlaced`` (the response comes after the broker confirmed it); the
handler ``remember_order`` consumes it; ``GET /orders/{order_id}`` shows what the handler saw.
``GET /healthz`` says whether the app is up, ``GET /asyncapi`` shows its AsyncAPI document.
The broker comes from ``DISPYTCH_BROKER_URL`` (in memory when unset).
"""

from __future__ import annotations

import os
import uuid

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from dispytch import App, Event, EventBase
from dispytch.fastapi import Emitter, lifespan, routes


class OrderPlaced(EventBase):
    """A customer placed an order."""

    __topic__ = "orders"
    __event_type__ = "order_placed"

    order_id: str
    item: str
    quantity: int


class NewOrder(BaseModel):
    item: str
    quantity: int = 1


events = App(os.environ.get("DISPYTCH_BROKER_URL", "memory://orders"), group="orders-api")
events.publishes(OrderPlaced)
handled: dict[str, OrderPlaced] = {}  # what the handler consumed (a database in real life)


@events.handler(topic="orders", event="order_placed", retries=2, retry_interval=0.2)
async def remember_order(event: Event[OrderPlaced]) -> None:
    """Keep each placed order."""
    handled[event.body.order_id] = event.body


api = FastAPI(title="Orders", lifespan=lifespan(events))
api.include_router(routes(events, title="Orders", version="1.0.0"))


@api.post("/orders", status_code=202)
async def place_order(order: NewOrder, emitter: Emitter) -> dict[str, str]:
    order_id = str(uuid.uuid4())
    await emitter.emit(OrderPlaced(order_id=order_id, item=order.item, quantity=order.quantity))
    return {"order_id": order_id}


@api.get("/orders/{order_id}")
async def get_order(order_id: str) -> OrderPlaced:
    if order_id not in handled:
        raise HTTPException(404, "not handled (yet)")
    return handled[order_id]
