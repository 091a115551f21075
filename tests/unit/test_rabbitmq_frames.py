"""The struct-marshalled publish frames are byte for byte what pamqp (via aiormq) writes."""

from __future__ import annotations

from typing import Any

import pytest
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from dispytch.rabbitmq.frames import publish_frames

MAX_BODY = 131_064  # aiormq's max_content_size for RabbitMQ's default frame_max


def reference(channel: int, exchange: str, key: str, body: bytes, props: Any) -> bytes:
    frames: list[Any] = [
        Basic.Publish(exchange=exchange, routing_key=key, mandatory=True),
        ContentHeader(properties=props, body_size=len(body)),
    ]
    frames += [ContentBody(body[i : i + MAX_BODY]) for i in range(0, len(body), MAX_BODY)]
    return ChannelFrame.marshall(channel_number=channel, frames=frames).payload


@pytest.mark.parametrize("body", [b"", b"{}", "é".encode() * 100, b"x" * (2 * MAX_BODY + 7)])
@pytest.mark.parametrize(
    "headers",
    [None, {}, {"x-dispytch-key": "k-1", "h": "v"}, {"x-dispytch-key": bytearray(b"\xff")}],
)
def test_common_message_matches_pamqp(body: bytes, headers: Any) -> None:
    ours = publish_frames(
        7, "dispytch", "orders.eu", body, MAX_BODY, message_id="m-1", headers=headers
    )
    props = Basic.Properties(delivery_mode=2, message_id="m-1", headers=headers or None)
    assert ours == reference(7, "dispytch", "orders.eu", body, props)


def test_other_properties_are_marshalled_by_pamqp() -> None:
    props = Basic.Properties(
        delivery_mode=1, priority=3, correlation_id="c", message_id="m", content_type="a/b"
    )
    ours = publish_frames(1, "", "q", b"body", MAX_BODY, message_id="m", properties=props)
    assert ours == reference(1, "", "q", b"body", props)


def test_names_longer_than_amqp_allows_are_refused() -> None:
    with pytest.raises(ValueError, match=r"routing key .* AMQP allows 255"):
        publish_frames(1, "x", "k" * 256, b"", MAX_BODY, message_id="m")
    with pytest.raises(ValueError, match="exchange name"):
        publish_frames(1, "é" * 128, "k", b"", MAX_BODY, message_id="m")
