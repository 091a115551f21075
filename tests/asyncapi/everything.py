"""An app that uses every feature the AsyncAPI generator describes; ``build(url)`` makes one
for any broker URL (nothing is connected)."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from dispytch import App, Dependency, Event, EventBase, HandlerGroup, TopicSegment


class Plan(enum.Enum):
    FREE = "free"
    PRO = "pro"


class Address(BaseModel):
    """A postal address."""

    street: str
    city: str = Field(min_length=1, description="City name")
    zip_code: str = Field(pattern=r"^[0-9]{5}$")


class Card(BaseModel):
    kind: Literal["card"]
    last4: str = Field(min_length=4, max_length=4)


class Wire(BaseModel):
    kind: Literal["wire"]
    iban: str


class UserRegistered(EventBase):
    """A user signed up."""

    __topic__ = "users"
    __event_type__ = "user_registered"

    user_id: int = Field(gt=0)
    email: str
    plan: Plan = Plan.FREE
    address: Address | None = None
    tags: list[str] = []


class OrderPlaced(EventBase):
    """An order was placed in a shop."""

    __topic__ = "shop:{shop_id}:orders"
    __event_type__ = "order_placed"

    shop_id: int
    order_id: str
    payment: Annotated[Card | Wire, Field(discriminator="kind")]
    lines: list[tuple[str, int]]
    total_cents: int = Field(ge=0)


class Audit(EventBase):
    __topic__ = "audit:{region}"
    __event_type__ = "audit_entry"

    region: Literal["eu", "us"]
    message: str


class OrderBody(BaseModel):
    order_id: str
    total_cents: int


class Mailer:
    async def send(self, to: str) -> None: ...


def get_mailer() -> Mailer:
    return Mailer()


users = HandlerGroup()
orders = HandlerGroup(default_topic="shop:{shop_id}:orders")


@users.handler(
    topic="users",
    event="user_registered",
    retries=3,
    retry_on=(ConnectionError, TimeoutError),
    retry_interval=0.5,
    backoff="exponential",
    max_retry_interval=10,
    jitter=0.2,
)
async def welcome(
    event: Event[UserRegistered], mailer: Annotated[Mailer, Dependency(get_mailer)]
) -> None:
    """Send the welcome mail.

    Retried on connection problems."""
    await mailer.send(event.body.email)


@users.handler(topic="users", event="user_deleted")
async def forget(event: Event[dict[str, Any]]) -> None:
    """Forget a user (raw body)."""


@orders.handler(event="order_placed")
async def charge(
    event: Event[OrderBody], shop_id: Annotated[int, TopicSegment(gt=0, le=9999)]
) -> None:
    """Charge an order."""


@orders.handler(event="order_placed")
async def record(event: Event[OrderPlaced]) -> None:
    """Record an order in the ledger."""


def build(url: str = "memory://everything", **options: Any) -> App:
    app = App(url, group="billing", concurrency=32, ordering="partition", **options)
    app.add_handler_group(users)
    app.add_handler_group(orders)

    @app.handler(topic="audit:{region}", event="audit_entry")
    async def audit(
        event: Event[Audit], region: Annotated[Literal["eu", "us"], TopicSegment()]
    ) -> None:
        """Keep an audit entry."""

    app.publishes(UserRegistered, OrderPlaced, Audit)
    return app


app = build()
