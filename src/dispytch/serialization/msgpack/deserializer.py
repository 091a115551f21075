"""The MessagePack deserializer, with the decode caps of
:mod:`dispytch.serialization.deserializer`."""

from __future__ import annotations

from typing import Any

import msgpack

from dispytch.errors import DecodeError
from dispytch.events import Envelope
from dispytch.serialization.deserializer import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_MSGPACK_BYTES_PER_CONTAINER,
    CappedDeserializer,
    envelope_from_mapping,
)

__all__ = ["MessagePackDeserializer"]


class _TooDense(Exception):
    pass


class _Budget:
    """Counts maps and arrays as msgpack builds them; stops the decode past the budget."""

    __slots__ = ("budget", "left")

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.left = budget

    def __call__(self, container: Any) -> Any:
        self.left -= 1
        if self.left < 0:
            raise _TooDense
        return container


class MessagePackDeserializer(CappedDeserializer):
    """Decodes the MessagePack envelope.

    ``max_payload_bytes`` and ``bytes_per_container`` are the decode caps (see
    :mod:`dispytch.serialization.deserializer`); ``bytes_per_container=0`` turns the structure
    check off. MessagePack cannot be scanned for containers without decoding it, so a checked
    payload is decoded with a counter that stops at the budget: a refused payload has cost at
    most ``budget`` containers of memory (about 9x its size at the default).
    """

    returns_envelope = True

    def __init__(
        self,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        *,
        bytes_per_container: int = DEFAULT_MSGPACK_BYTES_PER_CONTAINER,
    ) -> None:
        super().__init__(max_payload_bytes, bytes_per_container)

    def deserialize(self, payload: bytes) -> Envelope:
        counter = self._counter(payload) if len(payload) > self._checked_above else None
        try:
            if counter is None:
                data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
            else:
                data = msgpack.unpackb(
                    payload,
                    raw=False,
                    strict_map_key=True,
                    object_hook=counter,
                    list_hook=counter,
                )
        except _TooDense:
            raise self._too_dense(len(payload), counter.budget if counter else 0) from None
        except RecursionError:
            raise DecodeError("MessagePack nested too deeply") from None
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise DecodeError(f"not valid MessagePack: {type(exc).__name__}: {exc}") from None
        return envelope_from_mapping(data)

    def _counter(self, payload: bytes) -> _Budget | None:
        size = len(payload)
        self._check_size(size)
        budget = self._container_budget(size)
        return None if budget is None else _Budget(budget)
