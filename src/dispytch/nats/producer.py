"""The producer: a JetStream publish that returns only after the stream's PubAck."""

from __future__ import annotations

from collections.abc import Mapping

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from pydantic import BaseModel

from dispytch.emitter.producer import Producer, ProducerTimeout
from dispytch.errors import EmitError
from dispytch.nats.config import NATSEventConfig
from dispytch.nats.wire import MSG_ID_HEADER, nats_headers
from dispytch.topic_rules import NATS

__all__ = ["NATSProducer", "publish_acked"]


class NATSProducer(Producer):
    """Publishes events to JetStream, the topic being the subject.

    ``send`` returns once a stream stored the message (its PubAck arrived). A subject no stream
    captures raises :class:`~dispytch.errors.EmitError` (add the subject to a stream, see
    :class:`~dispytch.nats.NATSBackend`'s ``subjects``); no PubAck within ``timeout`` seconds
    raises :class:`~dispytch.emitter.producer.ProducerTimeout`. Concurrent sends are pipelined.

    Args:
        jetstream: the nats-py JetStream context (``nc.jetstream()``).
        timeout: seconds to wait for the PubAck.
    """

    topic_rules = NATS

    def __init__(self, jetstream: JetStreamContext, timeout: float = 10.0) -> None:
        self.jetstream = jetstream
        self.timeout = timeout

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
            self.jetstream, topic, payload, nats_headers(headers, key), self.timeout
        )


async def publish_acked(
    jetstream: JetStreamContext,
    subject: str,
    payload: bytes,
    headers: dict[str, str] | None,
    timeout: float,
) -> None:
    """``js.publish`` with errors that say what happened and what to do."""
    try:
        await jetstream.publish(subject, payload, timeout=timeout, headers=headers)
    except nats.js.errors.NoStreamResponseError:
        raise EmitError(
            f"no JetStream stream stores subject {subject!r}, so the event was not stored; "
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
