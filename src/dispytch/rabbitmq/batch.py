"""Confirmed publishing of a whole batch in few writes, with one confirm future per message.

aiormq's ``basic_publish`` takes the channel lock, marshals and writes three frames and waits
for its confirm once per call, so a thousand concurrent calls cost a thousand lock hand-offs
and writes. Here a batch takes the lock once, numbers its messages like ``basic_publish`` does
(the channel's delivery tags, one confirm future each, the ``message_id`` aiormq maps a
``basic.return`` back by), marshals them with :mod:`dispytch.rabbitmq.frames` and writes the
frames of every 100 messages at once; RabbitMQ then confirms them like any other publishes.

The channel's bookkeeping is reached through :class:`~dispytch.rabbitmq._compat.PublishLedger`
only; a channel without it (another aiormq: :func:`~dispytch.rabbitmq._compat.ledger` is
``None``) publishes message by message instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import aiormq
from pamqp.commands import Basic

from dispytch.rabbitmq._compat import PublishLedger
from dispytch.rabbitmq.frames import publish_frames

__all__ = ["Publish", "publish_batch"]

#: Messages per write: the first ones reach the broker while the rest are still marshalled.
_WRITE_EVERY = 100


class Publish(NamedTuple):
    """One message of a batch: persistent with ``headers``, or with these ``properties``."""

    routing_key: str
    body: bytes
    headers: dict[str, Any] | None = None
    properties: Basic.Properties | None = None


class _Outcomes:
    """The confirms of one batch: one slot per message, one future for the whole batch.

    A :class:`_Slot` stands in the channel's ``confirmations`` where aiormq keeps a future per
    publish; aiormq only calls ``done``, ``cancelled``, ``set_result`` and ``set_exception`` on
    it. One future per batch instead of one per message keeps the per-message garbage (and the
    cyclic GC's work) small. The batch future is made by the channel, so a channel that closes
    rejects it, and with it every message still unconfirmed.
    """

    __slots__ = ("future", "results", "sealed", "waiting")

    def __init__(self, future: asyncio.Future[None], size: int) -> None:
        self.future = future
        self.results: list[Any] = [None] * size
        self.waiting = 0  # slots registered and not settled yet
        # Confirms arrive while later messages are still being written: the batch is complete
        # only once every message was registered (sealed) and every slot settled.
        self.sealed = False

    def settle(self, index: int, outcome: Any) -> None:
        self.results[index] = outcome
        self.waiting -= 1
        self._check()

    def seal(self) -> None:
        self.sealed = True
        self._check()

    def _check(self) -> None:
        if self.sealed and self.waiting == 0 and not self.future.done():
            self.future.set_result(None)


class _Slot:
    __slots__ = ("_done", "index", "outcomes")

    def __init__(self, outcomes: _Outcomes, index: int) -> None:
        self.outcomes = outcomes
        self.index = index
        self._done = False

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        # Only a slot given up on (timeout, lost channel) is done before its confirm: a late
        # confirm for it is then logged at debug level, as for a cancelled publish.
        return self._done

    def set_result(self, result: Any) -> None:
        if not self._done:
            self._done = True
            self.outcomes.settle(self.index, result)

    def set_exception(self, exception: BaseException) -> None:
        self.set_result(exception)


async def _write(
    ledger: PublishLedger,
    outcomes: _Outcomes,
    chunk: list[tuple[int, str]],
    frames: bytes,
    slots: list[_Slot],
    ids: list[tuple[int, list[str]]],
) -> None:
    """Number the chunk's messages (the channel lock is held) and queue their frames.

    The delivery tags are taken only here, next to the write, and given back if the write does
    not happen (cancelled while the connection's write queue is full): the broker numbers the
    publishes it receives, and a tag it never sees would shift every later confirm.
    """
    added = [_Slot(outcomes, index) for index, _ in chunk]
    message_ids = [message_id for _, message_id in chunk]
    first = ledger.reserve(list(zip(added, message_ids, strict=True)))
    try:
        await ledger.write(frames)
    except BaseException:
        ledger.release(first, message_ids)
        raise
    outcomes.waiting += len(added)
    slots += added
    ids.append((first, message_ids))


async def publish_batch(
    ledger: PublishLedger, exchange: str, messages: Sequence[Publish], timeout: float | None
) -> list[Any]:
    """Publish ``messages`` with ``mandatory``; one outcome per message.

    An outcome is the broker's ``basic.ack`` frame, a returned message (unroutable), or the
    exception that ended its wait (``basic.nack``, a lost channel, ``TimeoutError``) or kept it
    from being sent (a routing key or header AMQP cannot carry).
    """
    ids: list[tuple[int, list[str]]] = []  # (first tag, message ids) mapped in the channel
    try:
        return await _publish(ledger, exchange, messages, timeout, ids)
    finally:
        for first, message_ids in ids:
            ledger.forget(first, message_ids)


async def _publish(
    ledger: PublishLedger,
    exchange: str,
    messages: Sequence[Publish],
    timeout: float | None,
    ids: list[tuple[int, list[str]]],
) -> list[Any]:
    outcomes = _Outcomes(ledger.future(), len(messages))
    slots: list[_Slot] = []
    parts: list[bytes] = []
    chunk: list[tuple[int, str]] = []  # (index, message_id) of the frames in ``parts``
    number, max_body = ledger.number, ledger.max_body
    async with ledger.lock:
        for n, message in enumerate(messages, 1):
            if ledger.closed:
                raise aiormq.exceptions.ChannelInvalidStateError("the channel is closed")
            properties = message.properties
            message_id = properties.message_id if properties is not None else None
            # aiormq matches a basic.return to its publish by message_id.
            message_id = message_id or os.urandom(16).hex()
            if properties is not None:
                properties.message_id = message_id
            try:
                parts.append(
                    publish_frames(
                        number,
                        exchange,
                        message.routing_key,
                        message.body,
                        max_body,
                        message_id=message_id,
                        headers=message.headers,
                        properties=properties,
                    )
                )
            except Exception as exc:  # never sent: this message fails, the others go on
                outcomes.results[n - 1] = exc
            else:
                chunk.append((n - 1, message_id))
            if parts and (n % _WRITE_EVERY == 0 or n == len(messages)):
                await _write(ledger, outcomes, chunk, b"".join(parts), slots, ids)
                parts, chunk = [], []
                if n < len(messages):
                    # Let the connection write this part while the next one is marshalled, so
                    # the broker starts storing the batch before all of it is encoded.
                    await asyncio.sleep(0)
    outcomes.seal()
    if not slots:
        return outcomes.results
    failure: BaseException | None = None
    try:
        await asyncio.wait_for(asyncio.shield(outcomes.future), timeout)
    except TimeoutError:
        failure = TimeoutError()
    except asyncio.CancelledError:
        future = outcomes.future
        if not future.done() or future.cancelled() or future.exception() is None:
            raise  # our caller was cancelled
        failure = future.exception()  # the channel closed and cancelled the batch future
    except Exception as exc:  # the channel closed: it rejected the batch future
        failure = exc
    if failure is not None:
        for slot in slots:
            if not slot.done():
                slot.set_exception(failure)
    return outcomes.results
