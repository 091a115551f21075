"""The producer half of the backend seam."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

from pydantic import BaseModel

from dispytch.errors import EmitError

__all__ = ["Producer", "ProducerTimeout"]


class ProducerTimeout(EmitError, TimeoutError):
    """The broker did not confirm an event in time. The event may or may not have been stored."""


class Producer(ABC):
    """Sends bytes to a destination and returns only once the broker confirmed them.

    ``send`` must raise when the broker refused or did not confirm the message
    (:class:`ProducerTimeout` for a timeout), never return silently.
    """

    @abstractmethod
    async def send(
        self,
        topic: str,
        payload: bytes,
        config: BaseModel | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        key: bytes | None = None,
    ) -> None: ...

    async def close(self) -> None:
        """Release what the producer owns. The default owns nothing."""
