"""The producer: a JetStream publish that returns only after the stream's PubAck."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATSClient
from nats.js import JetStreamContext
from pydantic import BaseModel

from dispytch.emitter.producer import Outgoing, Producer
from dispytch.errors import EmitError, InvalidTopicError
from dispytch.nats._compat import connection_of
from dispytch.nats.config import NATSEventConfig
from dispytch.nats.pubacks import PubAcks, Publish, not_sent, not_stored, refused, timed_out
from dispytch.nats.wire import MSG_ID_HEADER, nats_headers
from dispytch.topic_rules import NATS
from dispytch.untrusted import loggable

__all__ = [
    "MAX_SUBJECT_BYTES",
    "NATSProducer",
    "check_publishable",
    "header_bytes",
    "publish_acked",
]

#: Longest subject Dispytch publishes to, in bytes. The server reads a publish's control line
#: (``HPUB <subject> <reply> <sizes>``) into at most ``max_control_line`` bytes (4096 by
#: default) and closes the connection when it is longer; this leaves room for the reply inbox.
MAX_SUBJECT_BYTES = 3840
# "NATS/1.0\r\n" opens a header block, "\r\n" ends it; each header is "name: value\r\n".
_HEADER_BLOCK = 12
_HEADER_LINE = 4


def header_bytes(headers: Mapping[str, str] | None) -> int:
    """The size of the NATS header block nats-py writes for ``headers``."""
    if not headers:
        return 0
    return _HEADER_BLOCK + sum(
        len(name.encode()) + len(value.encode("utf-8", "surrogateescape")) + _HEADER_LINE
        for name, value in headers.items()
    )


def check_publishable(
    subject: str, payload: bytes, headers: Mapping[str, str] | None, max_payload: int
) -> None:
    """Raise before a publish the server would answer by closing the connection: a subject
    longer than :data:`MAX_SUBJECT_BYTES` (:class:`~dispytch.errors.InvalidTopicError`), or a
    payload plus headers over the server's ``max_payload`` (nats-py checks the payload only)."""
    if len(subject) > MAX_SUBJECT_BYTES // 4 and len(subject.encode()) > MAX_SUBJECT_BYTES:
        raise InvalidTopicError(
            f"the NATS subject {loggable(subject)} is {len(subject.encode())} bytes; the "
            f"server closes the connection of a publish whose control line passes its "
            f"max_control_line, so subjects are limited to {MAX_SUBJECT_BYTES} bytes: use a "
            "shorter topic",
            rule="length",
        )
    if headers and len(payload) + header_bytes(headers) > max_payload:
        raise EmitError(
            f"the message for {loggable(subject)} is {len(payload) + header_bytes(headers)} "
            f"bytes with its headers, more than the NATS server's max_payload ({max_payload}); "
            "send a smaller event or raise max_payload"
        )


class NATSProducer(Producer):
    """Publishes events to JetStream, the topic being the subject.

    ``send`` returns once a stream stored the message (its PubAck arrived). A subject no stream
    captures raises :class:`~dispytch.errors.EmitError` (add the subject to a stream, see
    :class:`~dispytch.nats.NATSBackend`'s ``subjects``); no PubAck within ``timeout`` seconds
    raises :class:`~dispytch.emitter.producer.ProducerTimeout`. Concurrent sends are pipelined,
    and ``send_many`` writes a whole batch before it waits for the PubAcks (see
    :mod:`dispytch.nats.pubacks`).

    Replies to requests (:meth:`send_reply`) go to the requester's inbox subject as core NATS
    messages through ``replies``, not to a stream.

    Args:
        jetstream: the nats-py JetStream context (``nc.jetstream()``).
        timeout: seconds to wait for the PubAck.
        replies: a core producer on the same connection, for replies (``None``: cannot reply).
    """

    topic_rules = NATS
    reply_prefix = "_INBOX."

    def __init__(
        self,
        jetstream: JetStreamContext,
        timeout: float = 10.0,
        replies: Producer | None = None,
        *,
        connection: NATSClient | None = None,
    ) -> None:
        self.jetstream = jetstream
        self.timeout = timeout
        self.replies = replies
        #: The context's connection (the backend passes it; else read from the context).
        self.connection = connection if connection is not None else connection_of(jetstream)
        self._acks = PubAcks(self.connection, timeout) if self.connection is not None else None

    async def send_reply(self, address: str, payload: bytes, headers: Mapping[str, str]) -> None:
        """Publish a reply on the requester's inbox subject (core NATS, confirmed by the
        server's ``PONG``): inbox subjects are in no stream."""
        if self.replies is None:
            raise EmitError(
                "this NATSProducer was built without replies=NATSCoreProducer(connection); "
                "it cannot answer requests"
            )
        await self.replies.send(address, payload, headers=headers)

    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None:
        if self._acks is None:  # a context whose connection we cannot reach: a request
            await publish_acked(
                self.jetstream,
                topic,
                payload,
                _headers(config, headers, key),
                self.timeout,
                self.connection,
            )
            return
        (error,) = await self.send_many([Outgoing(topic, payload, config, key, headers)])
        if error is not None:
            raise error

    async def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Publish every message, then wait for all their PubAcks."""
        acks = self._acks
        if acks is None:  # a context whose connection we cannot reach: one request each
            return await super().send_many(messages)
        max_payload = acks.connection.max_payload
        results: list[BaseException | None] = [None] * len(messages)
        batch: list[Publish] = []
        indexes: list[int] = []
        for index, m in enumerate(messages):
            headers = _headers(m.config, m.headers, m.key)
            try:
                check_publishable(m.topic, m.payload, headers, max_payload)
            except EmitError as exc:
                results[index] = exc
                continue
            batch.append((m.topic, m.payload, headers))
            indexes.append(index)
        if batch:
            for index, outcome in zip(indexes, await acks.publish(batch), strict=True):
                results[index] = outcome
        return results

    async def close(self) -> None:
        """Stop listening for PubAcks. The connection stays open."""
        if self._acks is not None:
            await self._acks.close()


def _headers(
    config: BaseModel | None, headers: Mapping[str, str] | None, key: bytes | None
) -> dict[str, str] | None:
    """The wire headers of one event: its config's headers and ``msg_id``, the emit's
    headers, the ordering key."""
    if isinstance(config, NATSEventConfig):
        merged = dict(config.headers or {})
        if headers:
            merged.update(headers)
        if config.msg_id is not None:
            merged[MSG_ID_HEADER] = config.msg_id
        if key is None and config.partition_key is not None:
            key = config.partition_key.encode()
        headers = merged
    return nats_headers(headers, key)


async def publish_acked(
    jetstream: JetStreamContext,
    subject: str,
    payload: bytes,
    headers: dict[str, str] | None,
    timeout: float,
    connection: NATSClient | None,
) -> None:
    """``js.publish`` with errors that say what happened and what to do; a publish that would
    make the server close the connection raises before anything is sent (``connection``, the
    context's, tells the server's ``max_payload``)."""
    if connection is not None:
        check_publishable(subject, payload, headers, connection.max_payload)
    try:
        await jetstream.publish(subject, payload, timeout=timeout, headers=headers)
    except nats.js.errors.NoStreamResponseError:
        raise not_stored(subject) from None
    except nats.errors.TimeoutError as exc:
        raise timed_out(subject, timeout) from exc
    except nats.js.errors.APIError as exc:
        raise refused(subject, exc.description, exc.err_code) from exc
    except nats.errors.Error as exc:
        raise not_sent(subject, exc) from exc
