"""Idempotent handling: remember which handler already succeeded on which event.

At-least-once delivery means a handler can see an event again: after a crash (the work was done,
the ack never reached the broker), after a rebalance, or when a dead letter is replayed. A dedup
store keeps one key per *(consumer group, handler, event id)* whose handler succeeded; the
listener looks the key up before it runs the handler and skips the handler when it is there.

Turn it on for a whole app with ``App(dedup=RedisDedup("redis://...", ttl=86400))`` (every
handler, unless one says ``@app.handler(..., dedup=False)``), or for one handler with
``@app.handler(..., dedup=True)``, which uses the app's store or, without one, a
:class:`MemoryDedup` of the process.

The window that stays: the key is written *after* the handler succeeded (and after the events it
returned were emitted). A crash between the two runs the handler again on redelivery, so the
guarantee is still at-least-once; the store turns "every in-flight event after a crash" into
"the few whose success was not recorded yet". A store that fails (Redis down) never blocks an
event: the lookup counts as "not seen" and a failed write is logged.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import OrderedDict

from dispytch.errors import ConfigurationError

__all__ = ["DedupStore", "MemoryDedup", "dedup_key"]

#: Event ids longer than this are hashed into the key (an id comes off the wire).
_MAX_ID_CHARS = 128


def dedup_key(prefix: str, event_id: str) -> str:
    """The store key of ``event_id`` for the handler whose key prefix is ``prefix``."""
    if len(event_id) > _MAX_ID_CHARS:
        event_id = "sha256:" + hashlib.sha256(event_id.encode("utf-8", "replace")).hexdigest()
    return prefix + event_id


class DedupStore(ABC):
    """Where successful (handler, event) pairs are remembered. Keys are opaque strings built by
    the listener (``<group>:<module.handler>:<event id>``)."""

    @abstractmethod
    async def seen(self, key: str) -> bool:
        """Whether ``key`` was recorded (and has not expired)."""

    @abstractmethod
    async def record(self, key: str) -> None:
        """Remember ``key``: its handler succeeded."""

    async def close(self) -> None:
        """Release connections; the store may be used again afterwards (it reconnects)."""


class MemoryDedup(DedupStore):
    """The keys of the last ``max_entries`` successes, in this process (least recently used
    dropped first).

    Catches redeliveries to the same process (a Kafka rewind, a RabbitMQ redelivery after a
    reconnect, a replayed dead letter) but not those after the process died: use
    :class:`~dispytch.redis.RedisDedup` for that.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 1:
            raise ConfigurationError(f"max_entries must be an int >= 1, got {max_entries!r}")
        self.max_entries = max_entries
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __repr__(self) -> str:
        return f"MemoryDedup(max_entries={self.max_entries})"

    def __len__(self) -> int:
        return len(self._keys)

    async def seen(self, key: str) -> bool:
        keys = self._keys
        if key in keys:
            keys.move_to_end(key)
            return True
        return False

    async def record(self, key: str) -> None:
        keys = self._keys
        keys[key] = None
        keys.move_to_end(key)
        if len(keys) > self.max_entries:
            keys.popitem(last=False)
