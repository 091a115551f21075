"""The reply inbox of an app on NATS (JetStream or core): a core subscription on an inbox
subject of its own."""

from __future__ import annotations

import uuid

from nats.aio.client import Client as NATSClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from dispytch.nats import _compat
from dispytch.request import Deliver, ReplyInbox

__all__ = ["INBOX_PREFIX", "NATSInbox"]

#: Reply subjects start with this (NATS' own convention for inboxes).
INBOX_PREFIX = "_INBOX."


class NATSInbox(ReplyInbox):
    """Subscribes ``_INBOX.<random>`` on the app's connection. Replies are core NATS messages
    (sent with a ``PING``/``PONG`` confirm, not stored in a stream), the native NATS
    request/reply path: a reply sent while the requester is disconnected is lost, and the
    request times out."""

    def __init__(self, connection: NATSClient) -> None:
        self.connection = connection
        self.address = INBOX_PREFIX + uuid.uuid4().hex
        self._subscription: Subscription | None = None

    async def start(self, deliver: Deliver) -> None:
        async def on_reply(msg: Msg) -> None:
            deliver(msg.data, msg.headers or {})

        self._subscription = await self.connection.subscribe(self.address, cb=on_reply)
        # The server knows the subscription before the first request goes out.
        await _compat.round_trip(self.connection)

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None and not self.connection.is_closed:
            await subscription.unsubscribe()
