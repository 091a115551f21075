"""Delivery attempts of Kafka records across processes, kept in the commit metadata. Pure.

Kafka keeps no delivery count, so a record whose handler kills the process would be read again,
as attempt 1, by every restart. Dispytch keeps the count in the metadata string Kafka stores
with each committed offset (one per partition):

* **Normal mode.** Before a record at or above the partition's *watermark* is handed out, the
  consumer commits (its settled position, unchanged) with metadata ``w=<watermark>`` raised a
  window of offsets ahead, in the background before it is needed; so the committed metadata
  always covers every record handed out. A clean stop or a partition revoke commits empty
  metadata.
* **After a crash** (a new owner finds a watermark ``W`` above the committed offset ``C``), the
  records ``C .. W-1`` may have been in flight when the previous owner died:

  1. the first time, they are all handed out as usual, concurrently, as attempt 2; the
     consumer commits ``r=<end>:2`` first (that range and its count). A crash that no record
     caused (a deploy's SIGKILL, the OOM killer) costs one commit;
  2. if the process dies again inside that range, the next owner hands its records out **one
     at a time** (``r=<end>:<attempt>:s``), committing ``a=<offset>:<attempt>`` before each
     and waiting for it to be settled: the record that kills the process is named with a
     growing count, the others keep the range's count (a record handed out alone is the only
     one that can have killed it). Once a count passes the listener's ``max_deliveries`` the
     listener dead-letters that record without running a handler, and the crash loop ends.

Metadata written by anything else (another client, an older Dispytch) is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Committed", "PartitionDeliveries", "decode", "encode"]

PREFIX = "dispytch/1"


@dataclass(frozen=True, slots=True)
class Committed:
    """What a previous owner wrote in a partition's commit metadata."""

    watermark: int
    #: ``(end, attempt, one at a time)``: records below ``end`` were being recovered.
    recovering: tuple[int, int, bool] | None = None
    #: ``{offset: attempt}`` of a record handed out alone.
    named: dict[int, int] = field(default_factory=dict)


def encode(
    watermark: int,
    recovering: tuple[int, int, bool] | None = None,
    current: tuple[int, int] | None = None,
) -> str:
    text = f"{PREFIX} w={watermark}"
    if recovering is not None:
        text += f" r={recovering[0]}:{recovering[1]}" + (":s" if recovering[2] else "")
    if current is not None:
        text += f" a={current[0]}:{current[1]}"
    return text


def decode(metadata: str) -> Committed | None:
    """What ``metadata`` says; ``None`` when it is not ours (or says nothing is in flight)."""
    parts = metadata.split(" ")
    if len(parts) < 2 or parts[0] != PREFIX:
        return None
    watermark: int | None = None
    recovering: tuple[int, int, bool] | None = None
    named: dict[int, int] = {}
    try:
        for part in parts[1:]:
            key, _, value = part.partition("=")
            fields = value.split(":")
            if key == "w":
                watermark = int(value)
            elif key == "r":
                recovering = (int(fields[0]), int(fields[1]), fields[2:] == ["s"])
            elif key == "a":
                named[int(fields[0])] = int(fields[1])
    except (ValueError, IndexError):
        return None
    return None if watermark is None else Committed(watermark, recovering, named)


@dataclass(slots=True)
class PartitionDeliveries:
    """What one partition's committed metadata says, and what this consumer promised in it."""

    #: Records below it may be handed out: a committed metadata covers them.
    persisted: int = 0
    #: The watermark the next commit writes (at least ``persisted``).
    wanted: int = 0
    #: Records below it (and at or above the committed offset) are being recovered...
    recover_below: int = 0
    #: ... as this attempt (unless :attr:`named` says otherwise)...
    base_attempt: int = 1
    #: ... and one at a time.
    serial: bool = False
    #: Attempts the previous owner recorded for single records, by offset.
    named: dict[int, int] = field(default_factory=dict)
    #: ``(offset, attempt)`` of the record handed out alone and not settled yet.
    current: tuple[int, int] | None = None
    #: How far ahead of the record being handed out the watermark is raised...
    window: int = 0
    #: ... once a record at or above this offset is handed out.
    extend_at: int = 0
    #: ``(time, offset)`` of the last raise, to size the window by the rate of hand-outs.
    last_raise: tuple[float, int] | None = None

    def raised(self, watermark: int) -> None:
        """A commit stored ``watermark``."""
        if watermark > self.persisted:
            self.persisted = watermark
            self.extend_at = watermark - (self.window >> 1)

    @classmethod
    def from_committed(
        cls, offset: int, metadata: str, highwater: int | None = None
    ) -> PartitionDeliveries:
        """The state after a previous owner committed ``offset`` with ``metadata``; records at or
        above ``highwater`` (the partition's end now) were never handed out by anyone."""
        found = decode(metadata)
        if found is None or offset < 0 or found.watermark <= offset:
            return cls()
        watermark = found.watermark
        end = watermark if highwater is None else min(watermark, highwater)
        state = cls(watermark, watermark)
        if end <= offset:
            return state  # nothing was handed out that is not settled
        state.recover_below = end
        recovering = found.recovering
        if recovering is None or recovering[0] <= offset:
            state.base_attempt = 2  # first crash in this range: hand it out as usual
        else:
            # The process died again inside a range being recovered: one record at a time.
            # After a concurrent recovery any record of the range may have killed it; after a
            # serial one, only the record it named.
            state.base_attempt = recovering[1] + (0 if recovering[2] else 1)
            state.serial = True
            state.named = {k: v + 1 for k, v in found.named.items()}
        return state

    def attempt(self, offset: int) -> int:
        """The attempt number of record ``offset`` of the recovered range."""
        return self.named.get(offset, self.base_attempt)

    def metadata(self) -> str:
        recovering = None
        if self.recover_below:
            recovering = (self.recover_below, self.base_attempt, self.serial)
        return encode(self.wanted, recovering, self.current)
