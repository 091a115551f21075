"""Broker-delayed retries (``retry_mode="broker"``): the headers a delayed copy carries. Pure.

A handler failure that its retry policy retries is, in broker mode, not waited for in the
process: the consumer stores a copy of the message in a destination private to its consumer
group (or has the broker redeliver it later: JetStream's ``nak`` with a delay), acknowledges
the original, and frees its concurrency slot and its key lane at once. The copy comes back
after the delay as a message whose :attr:`~dispytch.listener.consumer.Message.retry` names the
handler to run and the attempt it is.

The copy carries the original payload, key and headers plus these (which the consumer removes
again, so a handler sees the original headers):

* ``x-dispytch-retry-topic``: the original topic (what the message is routed by);
* ``x-dispytch-retry-handler``: the handler to run (only it runs);
* ``x-dispytch-retry-attempt``: the attempt the retry is (clamped to the policy's attempts);
* ``x-dispytch-retry-due``: when it is due, ms since the epoch (Kafka pauses until then).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from dispytch.listener.consumer import Message, Retried, RetryLater

__all__ = [
    "RETRY_ATTEMPT_HEADER",
    "RETRY_DUE_HEADER",
    "RETRY_HANDLER_HEADER",
    "RETRY_TOPIC_HEADER",
    "retried_message",
    "retry_destination",
    "retry_headers",
    "tier_ms",
]

RETRY_TOPIC_HEADER = "x-dispytch-retry-topic"
RETRY_HANDLER_HEADER = "x-dispytch-retry-handler"
RETRY_ATTEMPT_HEADER = "x-dispytch-retry-attempt"
RETRY_DUE_HEADER = "x-dispytch-retry-due"
_RETRY_PREFIX = "x-dispytch-retry-"
#: Prefix of the retry destinations: ``dispytch.retry.<group>``.
RETRY_DESTINATION_PREFIX = "dispytch.retry."
#: The largest attempt number read from a header (clamped further by the policy).
_MAX_ATTEMPT = 1_000_000


def retry_destination(group: str) -> str:
    """Where consumer group ``group`` keeps its delayed retries (memory topic, Redis stream)."""
    return RETRY_DESTINATION_PREFIX + group


def tier_ms(delay: float) -> int:
    """``delay`` (seconds) in ms, rounded to two significant digits: the delay tier of a
    broker that keeps one queue or topic per delay (RabbitMQ, Kafka), so that jittered delays
    share a few of them (1234 ms -> 1200, 56789 ms -> 57000)."""
    ms: int = max(1, round(delay * 1000))
    if ms < 100:
        return ms
    scale: int = 10 ** (len(str(ms)) - 2)
    return round(ms / scale) * scale


def retry_headers(message: Message, retry: RetryLater, due_ms: int) -> dict[str, str]:
    """The headers of the delayed copy of ``message`` for ``retry``."""
    out = {k: v for k, v in message.headers.items() if not k.lower().startswith(_RETRY_PREFIX)}
    out[RETRY_TOPIC_HEADER] = message.topic
    out[RETRY_HANDLER_HEADER] = retry.handler
    out[RETRY_ATTEMPT_HEADER] = str(retry.attempt)
    out[RETRY_DUE_HEADER] = str(due_ms)
    return out


def retried_message(message: Message) -> Message:
    """``message`` read from a retry destination, as the listener handles it: routed by its
    original topic, ``retry`` set, the retry headers removed. A message without the headers
    (not written by Dispytch) is returned as it is: no handler matches its topic."""
    headers = message.headers
    topic = headers.get(RETRY_TOPIC_HEADER)
    if not topic:
        return message
    handler = headers.get(RETRY_HANDLER_HEADER) or None
    kept: Mapping[str, str] = {
        k: v for k, v in headers.items() if not k.lower().startswith(_RETRY_PREFIX)
    }
    return replace(
        message,
        topic=topic,
        headers=kept,
        retry=Retried(handler, _attempt(headers.get(RETRY_ATTEMPT_HEADER))),
    )


def retry_due(headers: Mapping[str, str]) -> int:
    """The due time of a delayed copy (ms since the epoch; 0 when missing or unreadable)."""
    text = headers.get(RETRY_DUE_HEADER, "")
    return int(text) if text.isdigit() and len(text) < 16 else 0


def _attempt(text: str | None) -> int:
    if text and text.isdigit() and len(text) < 8:
        return max(2, min(int(text), _MAX_ATTEMPT))
    return 2
