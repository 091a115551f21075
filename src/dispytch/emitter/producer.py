"""The producer half of the backend seam."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel

from dispytch.errors import EmitError
from dispytch.topic_rules import GENERIC, TopicRules

__all__ = ["Outgoing", "Producer", "ProducerTimeout"]


class ProducerTimeout(EmitError, TimeoutError):
    """The broker did not confirm an event in time. The event may or may not have been stored."""


@dataclass(slots=True, frozen=True)
class Outgoing:
    """One message for :meth:`Producer.send_many`."""

    topic: str
    payload: bytes
    config: BaseModel | None = None
    key: bytes | None = None
    headers: Mapping[str, str] | None = None


class Producer(ABC):
    """Sends bytes to a destination and returns only once the broker confirmed them.

    ``send`` must raise when the broker refused or did not confirm the message
    (:class:`ProducerTimeout` for a timeout), never return silently.

    ``topic_rules`` says what a topic placeholder value may hold on this broker; the emitter
    checks every value against it before calling ``send``.

    How the emitter calls ``send`` (read from its signature once, when the emitter is built):
    ``topic=``, ``payload=`` and ``config=`` as keywords, as Dispytch 0.10 did, so a 0.10
    producer taking them keyword-only (or in another order) works; positionally, in that
    order, when ``send`` does not take those names by keyword (positional-only parameters) or
    has this class's signature (the same call, made directly). ``key=`` and ``headers=`` are
    passed by keyword only when ``send`` takes them (or ``**kwargs``).
    """

    topic_rules: ClassVar[TopicRules] = GENERIC
    #: Replies (request/reply) are sent only to addresses starting with this: a request's
    #: reply-to header cannot make a service publish into one of its event topics.
    reply_prefix: ClassVar[str] = "dispytch.reply."

    @abstractmethod
    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None: ...

    async def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Send several messages, pipelined; return once each was confirmed or failed.

        The result has one entry per message: ``None`` when confirmed, else the error. The
        default runs :meth:`send` concurrently; a backend overrides it when its client can
        enqueue a batch more cheaply than one coroutine per message.
        """
        results = await asyncio.gather(
            *(
                self.send(m.topic, m.payload, m.config, headers=m.headers, key=m.key)
                for m in messages
            ),
            return_exceptions=True,
        )
        return [r if isinstance(r, BaseException) else None for r in results]

    async def send_reply(self, address: str, payload: bytes, headers: Mapping[str, str]) -> None:
        """Send a reply to the reply inbox at ``address`` (see :mod:`dispytch.request`); return
        once the broker took it. The default sends it like an event, to the topic ``address``;
        a backend whose inboxes are not topics (NATS inbox subjects) overrides it."""
        await self.send(address, payload, headers=headers)

    async def close(self) -> None:
        """Release what the producer owns. The default owns nothing."""
