"""Dead letters on JetStream.

Dead letters of topic ``T`` are stored under subject ``{prefix}.T`` in their own stream
(``dispytch_dlq`` by default, capturing ``dispytch_dlq.>``). Not ``T.dlq`` in the event stream:
JetStream lets a subject live in one stream only, and a handler for ``orders.{kind}`` would
then receive the dead letters of ``orders``. Each dead letter is the original bytes with the
original headers plus ``x-dispytch-*`` headers saying what failed; it is published with a
PubAck, and the listener acks the original only after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from dispytch.dead_letter import DeadLetter
from dispytch.listener.consumer import Failure, Message
from dispytch.nats.producer import publish_acked
from dispytch.nats.streams import ensure_stream
from dispytch.nats.wire import KEY_B64_HEADER, KEY_HEADER, decode_key, nats_headers

__all__ = ["DEFAULT_DEAD_LETTER_STREAM", "DeadLetterStore", "read_dead_letters"]

DEFAULT_DEAD_LETTER_STREAM = "dispytch_dlq"

#: Seconds to wait for dead letters that the stream says are there.
_READ_TIMEOUT = 5.0


class DeadLetterStore:
    """Publishes dead letters to stream ``stream`` under ``{prefix}.{topic}``.

    The stream is created on first use if missing (``stream_options`` under nats-py's
    ``StreamConfig`` names, e.g. ``{"max_age": 30 * 86400}``; kept forever by default).
    """

    def __init__(
        self,
        jetstream: JetStreamContext,
        stream: str = DEFAULT_DEAD_LETTER_STREAM,
        prefix: str | None = None,
        *,
        stream_options: dict[str, Any] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.jetstream = jetstream
        self.stream = stream
        self.prefix = prefix or stream
        self.stream_options = dict(stream_options or {})
        self.timeout = timeout
        self._ready = False
        self._lock = asyncio.Lock()

    def subject(self, topic: str) -> str:
        return f"{self.prefix}.{topic}"

    async def ensure(self) -> None:
        """Create the dead-letter stream if it does not exist yet."""
        if self._ready:
            return
        async with self._lock:
            if not self._ready:
                await ensure_stream(
                    self.jetstream, self.stream, [f"{self.prefix}.>"], self.stream_options
                )
                self._ready = True

    async def put(self, message: Message, failure: Failure) -> None:
        """Store ``message``'s original bytes with the failure headers; raise if not stored."""
        await self.ensure()
        headers = {
            name: value
            for name, value in message.headers.items()
            # Nats-* headers steer the publish (dedup id, expected stream...): not copied.
            if not name.startswith("Nats-") and name not in (KEY_HEADER, KEY_B64_HEADER)
        }
        headers.update(failure.headers(message))
        await publish_acked(
            self.jetstream,
            self.subject(message.topic),
            message.payload,
            nats_headers(headers, message.key),
            self.timeout,
        )


async def read_dead_letters(
    js: JetStreamContext, stream: str, prefix: str, topic: str, limit: int
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``topic``, oldest first, without removing them.

    Reads through a short-lived consumer that acknowledges nothing and is deleted afterwards.
    """
    subject = f"{prefix}.{topic}"
    try:
        info = await js.add_consumer(
            stream,
            ConsumerConfig(
                filter_subject=subject,
                deliver_policy=DeliverPolicy.ALL,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )
    except nats.js.errors.NotFoundError:
        return []  # no dead-letter stream yet: no dead letters
    wanted = min(limit, info.num_pending or 0)
    out: list[DeadLetter] = []
    if wanted <= 0:
        await _delete_consumer(js, stream, info.name)
        return out
    sub = await js.pull_subscribe_bind(consumer=info.name, stream=stream)
    try:
        deadline = asyncio.get_running_loop().time() + _READ_TIMEOUT
        while len(out) < wanted:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                msgs = await sub.fetch(wanted - len(out), timeout=left)
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                headers = dict(msg.headers or {})
                key = decode_key(headers)
                headers.pop(KEY_HEADER, None)
                headers.pop(KEY_B64_HEADER, None)
                out.append(DeadLetter(topic, msg.data, headers, key))
    finally:
        await sub.unsubscribe()
        await _delete_consumer(js, stream, info.name)
    return out[:limit]


async def _delete_consumer(js: JetStreamContext, stream: str, name: str) -> None:
    # If this fails the consumer expires by itself (inactive_threshold).
    with contextlib.suppress(nats.errors.Error):
        await js.delete_consumer(stream, name)
