"""One live round per backend (default, plaintext brokers) for the characters that matter:
an emit either raises InvalidTopicError before anything is sent, or lands exactly on the
handler whose pattern it matches, with the value as its segment."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from dispytch import App, Event, EventBase
from dispytch.errors import InvalidTopicError
from tests.helpers import require_broker, wait_until
from tests.security.conftest import PLAINTEXT

pytestmark = pytest.mark.timeout(120)

VALUES = [".", ":", "*", ">", "#", "", "x" * 5000, "ok-1"]


async def test_characters_that_matter_on_a_live_broker(backend_name: str) -> None:
    url, port = PLAINTEXT[backend_name]
    require_broker(backend_name, port)
    d = ":" if backend_name.startswith("redis") else "."
    prefix = f"tv{uuid.uuid4().hex[:10]}"
    pattern = f"{prefix}{d}{{tenant}}{d}events"

    class Created(EventBase):
        __topic__ = pattern
        __event_type__ = "created"
        tenant: str

    app = App(url, group=f"tv-{uuid.uuid4().hex[:8]}")
    got: list[tuple[str, str]] = []

    @app.handler(topic=pattern, event="created")
    async def handle(event: Event[dict[str, Any]]) -> None:
        got.append((event.topic, event.body["tenant"]))

    landed: list[str] = []
    async with app:
        for value in VALUES:
            try:
                await app.emit(Created(tenant=value))
            except InvalidTopicError as exc:
                assert exc.field == "tenant" and exc.rule, value
                continue
            landed.append(value)
        await wait_until(lambda: len(got) >= len(landed), timeout=60, what="the landed events")
    assert "ok-1" in landed
    assert sorted(got) == sorted((f"{prefix}{d}{v}{d}events", v) for v in landed)
    # The delimiter and the empty value never go through; 5,000 characters only where the
    # broker has no length limit (Redis), and then they land where they should.
    assert d not in landed and "" not in landed
    assert ("x" * 5000 in landed) == (app.topic_rules.max_length is None)
