"""RedisProducer: PUBLISH, with Redis' reply as the confirm."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from dispytch.emitter.producer import Outgoing
from dispytch.redis.pipeline import PipelinedProducer
from dispytch.topic_rules import REDIS

__all__ = ["RedisProducer"]

logger = logging.getLogger("dispytch.redis")


class RedisProducer(PipelinedProducer[bytes]):
    """Publishes events to Redis Pub/Sub channels (the channel is the event's topic).

    ``send`` returns once Redis replied to ``PUBLISH``, and raises otherwise: :class:`EmitError`
    when Redis refused the command or the connection failed, :class:`ProducerTimeout` when no
    reply came within ``timeout`` seconds (the event may or may not have been published).

    What the reply means: Redis accepted the message and handed it to the subscribers connected
    *at that moment*. Pub/Sub stores nothing; a reply of 0 receivers means nobody heard the event
    and it is gone. That is normal for Pub/Sub, so it is logged at debug level only. Use Redis
    Streams (``redis+streams://``) when events must survive a subscriber being away.

    Pub/Sub messages carry no headers and no key: the ``headers`` and ``key`` arguments are
    accepted (so the same emitter code runs on every backend) and ignored.

    Sends made concurrently (``emit_many``, many tasks) are written in call order as one
    pipelined round trip, so their order on a channel is the call order.

    Args:
        redis: a ``redis.asyncio.Redis`` client; the producer does not close it.
        timeout: seconds to wait for Redis' reply to a batch; ``None`` waits as long as the
            client's own ``socket_timeout`` allows.
        max_batch: most ``PUBLISH`` commands written in one round trip.
    """

    topic_rules = REDIS

    command = "PUBLISH"
    outcome = "published"

    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None:
        """PUBLISH ``payload`` on channel ``topic``; return once Redis replied."""
        receivers = await self._submit(topic, payload)
        if receivers == 0:
            logger.debug("published to %r; no subscriber was listening, the event is gone", topic)

    def _item(self, message: Outgoing) -> bytes:
        return message.payload

    def _args(self, topic: str, item: bytes) -> tuple[Any, ...]:
        return ("PUBLISH", topic, item)
