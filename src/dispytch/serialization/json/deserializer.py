"""The JSON deserializer, with the decode caps of :mod:`dispytch.serialization.deserializer`."""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from typing import Any

from pydantic_core import from_json

from dispytch.errors import DecodeError
from dispytch.events import Envelope
from dispytch.serialization.deserializer import (
    DEFAULT_BYTES_PER_CONTAINER,
    DEFAULT_MAX_PAYLOAD_BYTES,
    CappedDeserializer,
    envelope_from_mapping,
)

__all__ = ["JSONDeserializer"]

# json.loads() wraps the C scanner in two Python calls and two whitespace regex matches; a
# compact document (what serializers write) needs neither. Anything else takes json.loads.
_scan_once: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _loads(text: str) -> Any:
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        return json.loads(text)  # leading whitespace, or not JSON: json.loads says which
    if end != len(text):
        return json.loads(text)  # trailing whitespace is fine, trailing data raises
    return value


class JSONDeserializer(CappedDeserializer):
    """Decodes the JSON envelope.

    ``max_payload_bytes`` and ``bytes_per_container`` are the decode caps (see
    :mod:`dispytch.serialization.deserializer`); ``bytes_per_container=0`` turns the structure
    check off. A ``{`` or ``[`` inside a string counts as a container too, so the count is an
    upper bound and costs one pass over the bytes, nothing is decoded before it passes.

    UTF-8 payloads are parsed by pydantic-core's parser, straight from the bytes. What it
    refuses (nesting deeper than 200, integers beyond its range, escaped lone surrogates) gets
    a second opinion from the standard library's, so every payload decodes as it did with
    ``json.loads`` and fails with the same :class:`~dispytch.errors.DecodeError`.
    """

    returns_envelope = True

    def __init__(
        self,
        encoding: str = "utf-8",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        *,
        bytes_per_container: int = DEFAULT_BYTES_PER_CONTAINER,
    ) -> None:
        self.encoding = encoding
        self._utf8 = codecs.lookup(encoding).name == "utf-8"
        super().__init__(max_payload_bytes, bytes_per_container)

    def deserialize(self, payload: bytes) -> Envelope:
        if len(payload) > self._checked_above:
            self._check(payload)
        if self._utf8:
            try:
                # Keys only: caching every string costs more than it saves on unique ids.
                data = from_json(payload, cache_strings="keys")
            except ValueError:  # the standard library's parser decides, and words the error
                data = self._decode(payload)
        else:
            data = self._decode(payload)
        return envelope_from_mapping(data)

    def _decode(self, payload: bytes) -> Any:
        try:
            return _loads(payload.decode(self.encoding))
        except RecursionError:
            raise DecodeError("JSON nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"not valid JSON: {exc}") from None

    def _check(self, payload: bytes) -> None:
        size = len(payload)
        self._check_size(size)
        budget = self._container_budget(size)
        if budget is not None and payload.count(b"{") + payload.count(b"[") > budget:
            raise self._too_dense(size, budget)
