"""The producer: a JetStream publish that returns only after the stream's PubAck."""

from __future__ import annotations

from collections.abc import Mapping

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATSClient
from nats.js import JetStreamContext
from pydantic import BaseModel

from dispytch.emitter.producer import Producer, ProducerTimeout
from dispytch.errors import EmitError, InvalidTopicError
from dispytch.nats._compat import connection_of
from dispytch.nats.config import NATSEventConfig
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
    raises :class:`~dispytch.emitter.producer.ProducerTimeout`. Concurrent sends are pipelined.

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
        if isinstance(config, NATSEventConfig):
            merged = dict(config.headers or {})
            if headers:
                merged.update(headers)
            if config.msg_id is not None:
                merged[MSG_ID_HEADER] = config.msg_id
            if key is None and config.partition_key is not None:
                key = config.partition_key.encode()
            headers = merged
        await publish_acked(
            self.jetstream,
            topic,
            payload,
            nats_headers(headers, key),
            self.timeout,
            self.connection,
        )


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
        raise EmitError(
            f"no JetStream stream answered for subject {subject!r}, so the event was not "
            "stored: either its stream is electing a new leader (a cluster node was lost; "
            "retry in a few seconds) or no stream stores the subject. For the latter, "
            "start a consumer for this topic first (the app adds the topics its handlers "
            "subscribe to to its stream) or list it in the backend's subjects option, e.g. "
            f"App('nats://...', subjects=[{subject!r}]) (a wildcard such as 'orders.>' covers "
            "many topics)"
        ) from None
    except nats.errors.TimeoutError as exc:
        raise ProducerTimeout(
            f"JetStream did not acknowledge the event for {subject!r} within {timeout}s; it "
            "may or may not have been stored"
        ) from exc
    except nats.js.errors.APIError as exc:
        raise EmitError(
            f"JetStream refused the event for {subject!r}: {exc.description} "
            f"(code {exc.err_code}); check the stream's limits and state"
        ) from exc
    except nats.errors.Error as exc:
        raise EmitError(
            f"could not publish to {subject!r} ({type(exc).__name__}: {exc}); the event was "
            "not stored: check the payload size and subject, or retry once connected"
        ) from exc
