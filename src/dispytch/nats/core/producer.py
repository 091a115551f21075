"""NATSCoreProducer: core NATS publishes, confirmed by a PING/PONG round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import nats.errors
from nats.aio.client import Client as NATSClient
from pydantic import BaseModel

from dispytch.emitter.outcomes import wake
from dispytch.emitter.producer import Outgoing, Producer, ProducerTimeout
from dispytch.errors import EmitError
from dispytch.nats import _compat
from dispytch.nats.producer import check_publishable
from dispytch.nats.wire import nats_headers
from dispytch.topic_rules import NATS

__all__ = ["NATSCoreProducer"]


class NATSCoreProducer(Producer):
    """Publishes events on core NATS subjects (the subject is the event's topic).

    ``send`` returns once the server has the message: after the publish, a ``PING`` is
    answered with ``PONG`` only when the server processed everything the connection sent
    before it. Sends made meanwhile share that round trip, so concurrent sends and
    ``emit_many`` cost one round trip per batch, not per event.

    **At most once**: the server hands the message to the subscribers connected at that
    moment and keeps nothing; with no subscriber the event is gone, and nobody can tell. Use
    JetStream (``nats://``) when events must survive a subscriber being away.

    Raises :class:`~dispytch.errors.EmitError` when the message cannot be sent (too large for
    the server's ``max_payload``, a subject the server would close the connection for,
    connection closed) and :class:`~dispytch.emitter.producer.ProducerTimeout` when no ``PONG``
    came within ``timeout`` seconds (the event may or may not have been delivered).

    A connection whose reader has died (it looks connected but hears nothing, so no ``PONG``
    can ever confirm) is never reported as confirming: the emit raises and the connection is
    made to reconnect.

    Args:
        connection: a connected ``nats.aio.client.Client``; the producer does not close it.
        timeout: seconds to wait for the server's ``PONG``.
    """

    topic_rules = NATS
    reply_prefix = "_INBOX."

    def __init__(self, connection: NATSClient, timeout: float = 10.0) -> None:
        self.connection = _compat.harden(connection)
        self.timeout = timeout
        # Futures of publishes written since the last PING went out; one round trip confirms
        # them all (the server answers PINGs in order, after what came before them).
        self._unconfirmed: list[asyncio.Future[None]] = []
        self._confirmer: asyncio.Task[None] | None = None
        # A send is confirming its own publish (no task): sends meanwhile wait for the next
        # round, which a confirmer task runs once this one is done.
        self._busy = False
        self._idle: list[asyncio.Future[None]] = []

    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None:
        await self._publish(topic, payload, nats_headers(headers, key))
        if self._busy or self._confirmer is not None:
            await self._confirmation()
            return
        # Nothing else awaits a round trip: this send makes its own, with no task between.
        self._busy = True
        try:
            error = await self._round_trip(1)
        finally:
            self._busy = False
            if self._unconfirmed:
                self._start_confirmer()
            else:
                wake(self._idle)
        if error is not None:
            raise error

    async def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Publish every message, then confirm them all with one round trip."""
        results: list[BaseException | None] = [None] * len(messages)
        sent: list[int] = []
        for i, m in enumerate(messages):
            try:
                await self._publish(m.topic, m.payload, nats_headers(m.headers, m.key))
            except EmitError as exc:
                results[i] = exc
            else:
                sent.append(i)
        if sent:
            try:
                await self._confirmation()
            except EmitError as exc:
                for i in sent:
                    results[i] = exc
        return results

    async def _publish(self, subject: str, payload: bytes, headers: dict[str, str] | None) -> None:
        check_publishable(subject, payload, headers, self.connection.max_payload)
        try:
            await self.connection.publish(subject, payload, headers=headers)
        except nats.errors.MaxPayloadError as exc:
            raise EmitError(
                f"the event for {subject!r} is {len(payload)} bytes, more than the NATS "
                f"server's max_payload ({exc}); send a smaller event or raise max_payload"
            ) from None
        except (nats.errors.Error, ValueError, TypeError) as exc:
            raise EmitError(
                f"could not publish to {subject!r} ({type(exc).__name__}: {exc}); the event "
                "was not sent"
            ) from exc

    def _confirmation(self) -> asyncio.Future[None]:
        """A future set once the server has everything published so far."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._unconfirmed.append(future)
        self._start_confirmer()
        return future

    def _start_confirmer(self) -> None:
        if self._confirmer is None and not self._busy:
            self._confirmer = asyncio.create_task(self._confirm(), name="dispytch-nats-confirm")

    async def _confirm(self) -> None:
        batch: list[asyncio.Future[None]] = []
        try:
            while self._unconfirmed:
                batch, self._unconfirmed = self._unconfirmed, []
                error = await self._round_trip(len(batch))
                for future in batch:
                    if future.done():
                        continue  # the caller gave up (cancelled)
                    if error is None:
                        future.set_result(None)
                    else:
                        future.set_exception(error)
        finally:
            self._confirmer = None
            # Only when cancelled or failing: nobody confirms these any more.
            for future in batch + self._unconfirmed:
                if not future.done():
                    future.set_exception(EmitError("the producer stopped before confirming"))
            self._unconfirmed = []
            wake(self._idle)

    async def _round_trip(self, count: int) -> EmitError | None:
        connection = self.connection
        reconnects = connection.stats["reconnects"]
        try:
            if not connection.is_connected:
                # Reconnecting: nats-py keeps the publishes in its reconnect buffer and its
                # flush() would return at once, confirming nothing.
                raise nats.errors.ConnectionReconnectingError()
            await self._check_reader()
            # The publishes nats-py buffered go out before the PING (see _compat.round_trip).
            await _compat.round_trip(connection, self.timeout)
            if connection.stats["reconnects"] != reconnects or not connection.is_connected:
                raise nats.errors.ConnectionReconnectingError()
            # flush() returns at once, without a PONG, when the reader is gone.
            await self._check_reader()
        except (nats.errors.FlushTimeoutError, TimeoutError) as exc:
            return ProducerTimeout(
                f"the NATS server did not confirm {count} publish(es) within {self.timeout}s "
                f"({type(exc).__name__}); they may or may not have been delivered"
            )
        except nats.errors.Error as exc:
            return EmitError(
                f"could not confirm {count} publish(es) with the NATS server "
                f"({type(exc).__name__}: {exc}); they may or may not have been delivered"
            )
        return None

    async def _check_reader(self) -> None:
        """Raise (and reconnect) when the connection's reader is gone: it would never hear
        the PONG, and nats-py's flush() would then return at once as if confirmed."""
        if _compat.reader_alive(self.connection):
            return
        await _compat.force_reconnect(self.connection)
        raise nats.errors.ConnectionReconnectingError()

    async def close(self) -> None:
        """Wait for a confirmation round in progress. The connection stays open."""
        while self._busy or self._confirmer is not None:
            idle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._idle.append(idle)
            await idle
