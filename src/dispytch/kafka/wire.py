"""How a Kafka record becomes a :class:`~dispytch.listener.consumer.Message`. Pure.

Kafka header *names* are strings (UTF-8) in the protocol, header *values* are bytes. A value
that is not UTF-8 is handed to handlers with replacement characters (dead letters keep its
bytes). A name that is not UTF-8 breaks the protocol: the record is delivered to no handler, it
is dead-lettered, its raw bytes kept, and each such header travels as
``x-dispytch-undecodable-header-<n>: <base64 name>:<base64 value>``, the dead letter saying so
in ``x-dispytch-undecodable: headers`` (as on every backend, see :mod:`dispytch.poison`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from dispytch.kafka.records import RawRecord
from dispytch.listener.consumer import Message
from dispytch.poison import UNDECODABLE_HEADER, Undecodable, header_pair
from dispytch.untrusted import loggable

__all__ = ["Decoded", "lenient_message", "str_headers", "to_message"]


def str_headers(headers: Sequence[tuple[str, bytes | None]]) -> dict[str, str]:
    """Headers as aiokafka hands them (``str`` names) with every value as text."""
    return {k: (v or b"").decode("utf-8", "replace") for k, v in headers} if headers else {}


def to_message(record: Any, attempt: int) -> Message:
    """The listener's view of an aiokafka ``ConsumerRecord``; the record rides in ``extra``."""
    return Message(
        topic=record.topic,
        payload=record.value if record.value is not None else b"",
        key=record.key,
        headers=str_headers(record.headers),
        delivery_attempt=attempt,
        partition=record.partition,
        offset=record.offset,
        extra=record,
    )


class Decoded(NamedTuple):
    """A record read leniently: its message, and why it cannot be handled (``None``: it can)."""

    message: Message
    problem: str | None


def lenient_message(topic: str, partition: int, record: RawRecord, attempt: int) -> Decoded:
    """A record whose header names may be any bytes, as a message; never raises."""
    headers: dict[str, str] = {}
    bad: list[bytes] = []
    for index, (name, value) in enumerate(record.headers):
        try:
            headers[name.decode("utf-8")] = (value or b"").decode("utf-8", "replace")
        except UnicodeDecodeError:
            bad.append(name)
            pair_name, pair = header_pair(index, name, value or b"")
            headers[pair_name] = pair
    problem = None
    if bad:
        headers[UNDECODABLE_HEADER] = "headers"
        problem = f"header name {loggable(bad[0])} is not UTF-8" + (
            f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        )
    message = Message(
        topic=topic,
        payload=record.value if record.value is not None else b"",
        key=record.key,
        headers=headers,
        delivery_attempt=attempt,
        partition=partition,
        offset=record.offset,
        extra=record,
    )
    if problem is not None:
        # The dead-letter writer reads the raw headers from the record itself.
        message.undecodable = Undecodable(("headers",), problem)
    return Decoded(message, problem)
