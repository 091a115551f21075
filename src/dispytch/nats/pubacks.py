"""JetStream publishes pipelined: one reply subscription per producer, one future per batch.

nats-py's ``JetStreamContext.publish`` is a request: it publishes, then waits for that one
PubAck, so a thousand concurrent publishes cost a thousand coroutines, timers and waits (nats-py
has no batch publish). Here a producer subscribes once to ``<inbox>.*``; every publish gets a
reply subject of its own under that inbox, a batch is written in one go, and each PubAck settles
its message's slot in the batch's :class:`~dispytch.emitter.outcomes.Outcomes` (the core NATS
producer confirms its batches the same way, with one PING).

Only public nats-py API: ``new_inbox``, ``subscribe`` with a callback, ``publish`` with a reply
subject. A reply that comes after its publish timed out finds no slot and is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from dispytch.emitter.outcomes import Outcomes
from dispytch.emitter.producer import ProducerTimeout
from dispytch.errors import EmitError

__all__ = ["PubAcks", "Publish", "not_sent", "not_stored", "refused", "timed_out"]

#: ``(subject, payload, headers)`` of one publish.
Publish = tuple[str, bytes, "dict[str, str] | None"]

# Every PubAck starts so; one without "error" in it stored the message (the stream's name
# cannot hold a quote, so '"error"' is never part of it).
_STORED = b'{"stream":'
_ERROR = b'"error"'
_NO_RESPONDERS = "503"


def not_stored(subject: str) -> EmitError:
    return EmitError(
        f"no JetStream stream answered for subject {subject!r}, so the event was not "
        "stored: either its stream is electing a new leader (a cluster node was lost; "
        "retry in a few seconds) or no stream stores the subject. For the latter, "
        "start a consumer for this topic first (the app adds the topics its handlers "
        "subscribe to to its stream) or list it in the backend's subjects option, e.g. "
        f"App('nats://...', subjects=[{subject!r}]) (a wildcard such as 'orders.>' covers "
        "many topics)"
    )


def timed_out(subject: str, timeout: float) -> ProducerTimeout:
    return ProducerTimeout(
        f"JetStream did not acknowledge the event for {subject!r} within {timeout}s; it "
        "may or may not have been stored"
    )


def refused(subject: str, description: Any, code: Any) -> EmitError:
    return EmitError(
        f"JetStream refused the event for {subject!r}: {description} "
        f"(code {code}); check the stream's limits and state"
    )


def not_sent(subject: str, exc: BaseException) -> EmitError:
    error = EmitError(
        f"could not publish to {subject!r} ({type(exc).__name__}: {exc}); the event was "
        "not stored: check the payload size and subject, or retry once connected"
    )
    error.__cause__ = exc
    return error


class PubAcks:
    """Publishes with a reply subject of this producer's inbox and matches the PubAcks."""

    def __init__(self, connection: Client, timeout: float) -> None:
        self.connection = connection
        self.timeout = timeout
        self._prefix = ""
        self._subscription: Subscription | None = None
        self._subscribing: asyncio.Lock = asyncio.Lock()
        self._count = 0
        #: reply subject -> (outcomes of its batch, index, subject published to)
        self._waiting: dict[str, tuple[Outcomes, int, str]] = {}

    async def _subscribe(self) -> None:
        async with self._subscribing:
            if self._subscription is None:
                inbox = self.connection.new_inbox()
                self._subscription = await self.connection.subscribe(
                    inbox + ".*", cb=self._on_reply
                )
                self._prefix = inbox + "."

    async def publish(self, messages: Sequence[Publish]) -> list[BaseException | None]:
        """Publish ``messages``, then wait (up to ``timeout``) for their PubAcks; the outcome
        of each: ``None`` (stored) or an :class:`~dispytch.errors.EmitError`."""
        if self._subscription is None:
            await self._subscribe()
        outcomes = Outcomes(asyncio.get_running_loop().create_future(), len(messages))
        waiting = self._waiting
        publish = self.connection.publish
        replies: list[str] = []
        try:
            for index, (subject, payload, headers) in enumerate(messages):
                self._count += 1
                reply = f"{self._prefix}{self._count}"
                waiting[reply] = (outcomes, index, subject)
                try:
                    await publish(subject, payload, reply=reply, headers=headers)
                except (nats.errors.Error, ValueError, TypeError) as exc:
                    del waiting[reply]
                    outcomes.results[index] = not_sent(subject, exc)
                    continue
                outcomes.expect()
                replies.append(reply)
            outcomes.seal()
            if outcomes.waiting:
                try:
                    async with asyncio.timeout(self.timeout):
                        await outcomes.future
                except TimeoutError:
                    for reply in replies:
                        entry = waiting.pop(reply, None)
                        if entry is not None:
                            outcomes.results[entry[1]] = timed_out(entry[2], self.timeout)
        finally:
            for reply in replies:
                waiting.pop(reply, None)
        return outcomes.results

    async def _on_reply(self, msg: Msg) -> None:
        entry = self._waiting.pop(msg.subject, None)
        if entry is None:
            return  # its publish gave up waiting
        outcomes, index, subject = entry
        outcomes.settle(index, _outcome(msg, subject))

    async def close(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            # The connection may be closing or gone already: so is the subscription then.
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()


def _outcome(msg: Msg, subject: str) -> EmitError | None:
    data = msg.data
    if data.startswith(_STORED) and _ERROR not in data:
        return None
    headers = msg.headers
    if not data and isinstance(headers, dict) and headers.get("Status") == _NO_RESPONDERS:
        return not_stored(subject)
    try:
        reply = json.loads(data)
    except ValueError:
        reply = None
    if not isinstance(reply, dict) or ("stream" not in reply and "error" not in reply):
        return EmitError(
            f"JetStream answered the event for {subject!r} with something that is not a "
            "PubAck; it may or may not have been stored"
        )
    error = reply.get("error")
    if error is None:
        return None
    if not isinstance(error, dict):
        error = {"description": error}
    return refused(subject, error.get("description"), error.get("err_code"))
