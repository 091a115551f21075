"""The deserializer seam, the envelope check every codec shares, and the decode caps.

Decode caps: a message is untrusted bytes, and decoding can multiply its size (a 16 MiB
``[{},{},…]`` is 5.6 million dicts, ~400 MB). Every built-in deserializer refuses, with a
:class:`~dispytch.errors.DecodeError` (dead-lettered, never retried):

* a payload over ``max_payload_bytes`` (16 MiB by default), before reading it;
* a payload over :data:`STRUCTURE_CHECK_BYTES` (64 KiB) that holds more than one object or
  array per ``bytes_per_container`` bytes (16 for JSON, 8 for the denser MessagePack, where a
  record of three short fields takes about 14 bytes). Containers are what expands most
  (an empty dict is 64 bytes of memory for 2 bytes of JSON): a 16 MiB ``[{},{},…]`` is refused
  before any decoding (JSON) or after decoding at most its budget of containers (MessagePack,
  about 9x the payload). What an accepted payload decodes to is then bounded by its scalars:
  measured worst cases are about 20x the payload for JSON and 30x for MessagePack (its short
  strings are denser), against 26x for JSON and 70x for MessagePack without the cap.

Payloads up to 64 KiB skip the structure check: the densest one decodes to about 2 MB, and the
check would cost every ordinary event a scan.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from dispytch.errors import ConfigurationError, DecodeError, FieldMissingError
from dispytch.events import Envelope

__all__ = [
    "DEFAULT_BYTES_PER_CONTAINER",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_MSGPACK_BYTES_PER_CONTAINER",
    "STRUCTURE_CHECK_BYTES",
    "CappedDeserializer",
    "Deserializer",
    "MessagePayload",
    "envelope_from_mapping",
]

#: Bigger payloads are refused before any parsing, so one hostile message cannot eat the heap.
DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
#: Payloads above this size get the structure check (see the module docstring).
STRUCTURE_CHECK_BYTES = 64 * 1024
#: Payload bytes each object or array must account for, on average, in a checked payload.
DEFAULT_BYTES_PER_CONTAINER = 16
#: The same for MessagePack, where containers and short values take fewer bytes.
DEFAULT_MSGPACK_BYTES_PER_CONTAINER = 8


class Deserializer(ABC):
    """Turns a message's bytes into an :class:`~dispytch.events.Envelope`; raises
    :class:`~dispytch.errors.DecodeError` on bad input (any other exception is treated the
    same way: the message is dead-lettered, never retried).

    A subclass's ``deserialize`` may also return what Dispytch 0.10 deserializers returned:
    :class:`MessagePayload`, or any object (a pydantic model, say) or mapping with ``id``,
    ``type``, ``body`` and ``timestamp``. Such a result is checked and turned into an
    ``Envelope`` once, right after ``deserialize``: a malformed one is a ``DecodeError`` (a dead
    letter), never an error later in the pipeline.
    """

    #: Set by deserializers whose ``deserialize`` always returns a checked ``Envelope``; the
    #: others get their results checked.
    returns_envelope: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("deserialize")
        if own is not None and not cls.__dict__.get("returns_envelope", False):
            setattr(cls, "deserialize", _checking(own))  # noqa: B010 - replaces the method

    @abstractmethod
    def deserialize(self, payload: bytes) -> Envelope: ...


def _checking(deserialize: Callable[[Any, bytes], Any]) -> Callable[[Any, bytes], Envelope]:
    @functools.wraps(deserialize)
    def checked(self: Any, payload: bytes) -> Envelope:
        result = deserialize(self, payload)
        if isinstance(result, Envelope):  # an Envelope, or a MessagePayload (checked already)
            return result
        if isinstance(result, Mapping):
            return envelope_from_mapping(dict(result))
        fields = ("id", "type", "body", "timestamp")
        return envelope_from_mapping({f: getattr(result, f) for f in fields if hasattr(result, f)})

    return checked


class MessagePayload(Envelope):
    """The decoded envelope under its Dispytch 0.10 name, for custom deserializers written
    for 0.10 (``return MessagePayload(**data)``). The fields are checked as the built-in
    deserializers check them (a bad one raises :class:`~dispytch.errors.DecodeError`) and
    unknown keys are ignored, as 0.10 did."""

    __slots__ = ()

    def __init__(
        self, id: str, type: str, body: dict[str, Any], timestamp: int = 0, **_: Any
    ) -> None:
        checked = envelope_from_mapping(
            {"id": id, "type": type, "body": body, "timestamp": timestamp}
        )
        for name in ("id", "type", "body", "timestamp"):
            object.__setattr__(self, name, getattr(checked, name))


def envelope_from_mapping(data: Any) -> Envelope:
    """Check the decoded envelope's shape without copying its body."""
    if type(data) is not dict:
        raise DecodeError(f"envelope must be an object, got {type(data).__name__}")
    try:
        id_ = data["id"]
        type_ = data["type"]
        body = data["body"]
    except KeyError:
        raise FieldMissingError(*(f for f in ("id", "type", "body") if f not in data)) from None
    timestamp = data.get("timestamp", 0)
    if type(id_) is not str or type(type_) is not str:
        raise DecodeError("envelope 'id' and 'type' must be strings")
    if type(body) is not dict:
        raise DecodeError(f"envelope 'body' must be an object, got {type(body).__name__}")
    if type(timestamp) is not int:
        if isinstance(timestamp, float) and timestamp.is_integer():
            timestamp = int(timestamp)
        else:
            raise DecodeError("envelope 'timestamp' must be an integer (milliseconds)")
    return Envelope(id_, type_, body, timestamp)


class CappedDeserializer(Deserializer):
    """A deserializer with decode caps: the base of the JSON and MessagePack ones."""

    def __init__(self, max_payload_bytes: int, bytes_per_container: int) -> None:
        if max_payload_bytes < 1:
            raise ConfigurationError(f"max_payload_bytes must be >= 1, got {max_payload_bytes}")
        if bytes_per_container < 0:
            raise ConfigurationError(
                f"bytes_per_container must be >= 0 (0: no structure check), got "
                f"{bytes_per_container}"
            )
        self._max_payload_bytes = max_payload_bytes
        self._bytes_per_container = bytes_per_container
        #: Payloads longer than this need a closer look: the one comparison on the hot path.
        self._checked_above = (
            min(max_payload_bytes, STRUCTURE_CHECK_BYTES)
            if bytes_per_container
            else max_payload_bytes
        )

    @property
    def max_payload_bytes(self) -> int:
        return self._max_payload_bytes

    @property
    def bytes_per_container(self) -> int:
        return self._bytes_per_container

    def _check_size(self, size: int) -> None:
        if size > self._max_payload_bytes:
            raise DecodeError(
                f"payload of {size} bytes exceeds max_payload_bytes={self._max_payload_bytes}; "
                "raise max_payload_bytes on the deserializer if such events are expected"
            )

    def _container_budget(self, size: int) -> int | None:
        """How many objects and arrays a payload of ``size`` bytes may hold (``None``: any)."""
        if not self._bytes_per_container or size <= STRUCTURE_CHECK_BYTES:
            return None
        return size // self._bytes_per_container

    @staticmethod
    def _too_dense(size: int, budget: int) -> DecodeError:
        return DecodeError(
            f"payload of {size} bytes holds more than {budget} objects/arrays (one per "
            f"bytes_per_container bytes); refused so it cannot expand in memory. Lower "
            "bytes_per_container on the deserializer if such events are expected"
        )
