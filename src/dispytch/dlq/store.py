"""The dead-letter store: read, replay and remove dead letters, the same way on every backend.

A backend gives its dead letters as a :class:`DeadLetterStore`: two operations are its own
(:meth:`~DeadLetterStore.scan` every dead letter, :meth:`~DeadLetterStore.remove` some) and
everything else is built on them here, once: :meth:`~DeadLetterStore.list` (per topic: count,
oldest, newest, reasons, destinations), :meth:`~DeadLetterStore.read`,
:meth:`~DeadLetterStore.replay` and :meth:`~DeadLetterStore.purge`.

**Replay never loses an event.** Dead letters are replayed in batches: a batch is published
through the backend's producer (its confirms awaited: Kafka acks, RabbitMQ publisher confirms,
Redis replies, JetStream PubAcks) and only then removed from the dead-letter destination. A
replay stopped at any point (Ctrl-C, SIGKILL, a broker failure) leaves every dead letter not yet
confirmed where it was, and running it again resumes. What it can double is bounded: the dead
letters published and not yet removed when it stopped, **at most one batch** (``batch``, 100 by
default; ``batch=1`` doubles at most one). Replayed events keep their id (the payload is
unchanged), so a handler with dedup on skips a double.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import math
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from dispytch.dead_letter import DeadLetter
from dispytch.dlq.selection import EVERYTHING, Selection
from dispytch.emitter.producer import Outgoing, Producer
from dispytch.errors import ConfigurationError

__all__ = [
    "REPLAYED_AT_HEADER",
    "REPLAY_COUNT_HEADER",
    "DeadLetterStore",
    "PurgeReport",
    "ReplayReport",
    "TopicSummary",
    "replay_message",
]

#: When the event was replayed (ms since the epoch).
REPLAYED_AT_HEADER = "x-dispytch-replayed-at"
#: How many times the event was replayed, this time included.
REPLAY_COUNT_HEADER = "x-dispytch-replay-count"
_FORWARDED_COUNT = "x-dispytch-forwarded-replay-count"
_OURS = "x-dispytch-"
#: The largest replay count carried on (the header is written by whoever can publish).
_MAX_COUNT = 1_000_000

#: Dead letters published per round trip of a replay (and so doubled at most after a kill).
DEFAULT_BATCH = 100


@dataclass(slots=True)
class TopicSummary:
    """The dead letters of one original topic."""

    topic: str
    count: int = 0
    #: failure times (ms since the epoch) of the oldest and newest one; ``None``: not recorded
    oldest: int | None = None
    newest: int | None = None
    reasons: Counter[str] = field(default_factory=Counter)
    #: where they are stored (the topic's own destination, fallback destinations), with counts
    destinations: Counter[str] = field(default_factory=Counter)

    def add(self, letter: DeadLetter) -> None:
        self.count += 1
        self.reasons[letter.reason or "?"] += 1
        self.destinations[letter.destination] += 1
        failed = letter.failed_at
        if failed is not None:
            self.oldest = failed if self.oldest is None else min(self.oldest, failed)
            self.newest = failed if self.newest is None else max(self.newest, failed)


@dataclass(slots=True)
class ReplayReport:
    """What a replay did (or, with ``dry_run``, would do)."""

    #: dead letters the selection took
    selected: int = 0
    #: published and removed from the dead-letter destination
    replayed: int = 0
    #: selected but not replayable (left in place); why, with counts
    skipped: Counter[str] = field(default_factory=Counter)
    #: whose publish failed (left in place); the replay stopped after them
    failed: int = 0
    error: str | None = None
    dry_run: bool = False
    #: total to expect, when it was counted first (for progress output)
    total: int | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def skipped_count(self) -> int:
        return sum(self.skipped.values())

    @property
    def rate(self) -> float:
        """Dead letters replayed per second so far."""
        elapsed = time.monotonic() - self.started
        return self.replayed / elapsed if elapsed > 0 else 0.0


@dataclass(slots=True)
class PurgeReport:
    """What a purge removed (or, with ``dry_run``, would remove)."""

    selected: int = 0
    removed: int = 0
    dry_run: bool = False
    total: int | None = None


Progress = Callable[[ReplayReport], None]
PurgeProgress = Callable[[PurgeReport], None]


def replay_message(letter: DeadLetter, to: str | None, now_ms: int) -> Outgoing | str:
    """The message that replays ``letter`` (to ``to``, else its original topic), or why it
    cannot be replayed.

    It carries the original payload and key (so the event keeps its id), the original headers
    without the ``x-dispytch-*`` ones this framework wrote, and two new ones:
    ``x-dispytch-replayed-at`` and ``x-dispytch-replay-count`` (one more than the replay count
    the event had when it failed).
    """
    headers = letter.headers
    if headers.get("x-dispytch-payload-truncated") is not None:
        return "payload truncated in the fallback destination"
    if to is None:
        unreadable = headers.get("x-dispytch-undecodable", "")
        if "topic" in unreadable.split(",") or not letter.topic:
            return "original topic unreadable (replay it with --to)"
    out = {k: v for k, v in headers.items() if not k.lower().startswith(_OURS)}
    previous = headers.get(_FORWARDED_COUNT) or headers.get(REPLAY_COUNT_HEADER) or "0"
    count = int(previous) if previous.isdigit() and len(previous) < 8 else 0
    out[REPLAYED_AT_HEADER] = str(now_ms)
    out[REPLAY_COUNT_HEADER] = str(min(count, _MAX_COUNT) + 1)
    return Outgoing(to or letter.topic, letter.payload, key=letter.key, headers=out)


class DeadLetterStore(ABC):
    """The dead letters of one backend (and consumer group, where the layout has one per group).

    Open one with :func:`dispytch.dlq.open_store` (from an app or a broker URL), or get it from
    ``backend.dead_letter_store(group)`` after ``backend.connect()``. A backend implements
    :meth:`scan` and :meth:`remove`; the operations are shared.
    """

    #: How removal works on this backend, in one line (``dispytch dlq`` shows it).
    removal: str = "deleted from the dead-letter destination"

    def __init__(self, producer: Producer | None, group: str | None = None) -> None:
        self.producer = producer
        self.group = group

    # -- what each backend provides -----------------------------------------------------------

    @abstractmethod
    def scan(self, topics: frozenset[str] = frozenset()) -> AsyncGenerator[DeadLetter, None]:
        """Every dead letter still stored (of ``topics``, or of every topic), each destination
        oldest first, fallback destinations included. The letters carry ``destination``,
        ``position`` and the ``handle`` :meth:`remove` needs."""

    @abstractmethod
    async def remove(self, letters: Sequence[DeadLetter]) -> None:
        """Remove ``letters`` (read by :meth:`scan`) from their destinations."""

    async def release(self) -> None:
        """End of one operation: hand back what :meth:`scan` holds and was not removed
        (RabbitMQ holds what it read unacknowledged). Every operation calls it last."""

    async def close(self) -> None:
        """Release what the store holds (the backend stays open)."""
        await self.release()

    # -- operations ---------------------------------------------------------------------------

    async def selected(self, selection: Selection = EVERYTHING) -> AsyncGenerator[DeadLetter, None]:
        """The dead letters ``selection`` takes, as :meth:`scan` yields them."""
        async with contextlib.aclosing(self.scan(selection.topics)) as letters:
            async for letter in letters:
                if selection.matches(letter):
                    yield letter

    async def list(self, selection: Selection = EVERYTHING) -> list[TopicSummary]:
        """Per original topic: count, oldest and newest failure, reasons and destinations."""
        summaries: dict[str, TopicSummary] = {}
        try:
            async with contextlib.aclosing(self.selected(selection)) as letters:
                async for letter in letters:
                    summary = summaries.get(letter.topic)
                    if summary is None:
                        summary = summaries[letter.topic] = TopicSummary(letter.topic)
                    summary.add(letter)
        finally:
            await self.release()
        return sorted(summaries.values(), key=lambda s: s.topic)

    async def count(self, selection: Selection = EVERYTHING) -> int:
        total = 0
        try:
            async with contextlib.aclosing(self.selected(selection)) as letters:
                async for _ in letters:
                    total += 1
        finally:
            await self.release()
        return total

    async def read(
        self, selection: Selection = EVERYTHING, limit: int = 100
    ) -> builtins.list[DeadLetter]:
        """Up to ``limit`` selected dead letters, without removing them."""
        out: builtins.list[DeadLetter] = []
        if limit <= 0:
            return out
        try:
            async with contextlib.aclosing(self.selected(selection)) as letters:
                async for letter in letters:
                    out.append(letter)
                    if len(out) >= limit:
                        break
        finally:
            await self.release()
        return out

    async def replay(
        self,
        selection: Selection = EVERYTHING,
        *,
        to: str | None = None,
        dry_run: bool = False,
        rate: float | None = None,
        batch: int = DEFAULT_BATCH,
        progress: Progress | None = None,
        total: int | None = None,
    ) -> ReplayReport:
        """Publish the selected dead letters again (to ``to``, else each to its original topic)
        and remove each once its publish was confirmed; at most ``rate`` per second.

        See the module docstring for what an interrupted replay leaves behind: at most
        ``batch`` events published twice. The replay stops at the first batch with a failed
        publish (``report.failed``, ``report.error``); what failed stays stored.
        """
        _check_batch(batch)
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ConfigurationError(f"rate must be a number of events per second > 0: {rate!r}")
        if not dry_run and self.producer is None:
            raise ConfigurationError("this dead-letter store has no producer to replay with")
        if rate is not None:
            batch = max(1, min(batch, math.ceil(rate / 10)))  # about ten rounds a second
        report = ReplayReport(dry_run=dry_run, total=total)
        pending: builtins.list[tuple[DeadLetter, Outgoing]] = []
        try:
            async with contextlib.aclosing(self.selected(selection)) as letters:
                async for letter in letters:
                    report.selected += 1
                    outgoing = replay_message(letter, to, int(time.time() * 1000))
                    if isinstance(outgoing, str):
                        report.skipped[outgoing] += 1
                        continue
                    if dry_run:
                        report.replayed += 1
                        continue
                    pending.append((letter, outgoing))
                    if len(pending) >= batch:
                        if not await self._replay_batch(pending, report, rate):
                            break
                        pending = []
                        if progress is not None:
                            progress(report)
                else:
                    if pending:
                        await self._replay_batch(pending, report, rate)
        finally:
            await self.release()
        if progress is not None:
            progress(report)
        return report

    async def _replay_batch(
        self,
        pending: builtins.list[tuple[DeadLetter, Outgoing]],
        report: ReplayReport,
        rate: float | None,
    ) -> bool:
        assert self.producer is not None  # checked by replay()
        if rate is not None:
            due = report.started + report.replayed / rate
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        results = await self.producer.send_many([outgoing for _, outgoing in pending])
        confirmed = [
            letter for (letter, _), error in zip(pending, results, strict=True) if error is None
        ]
        if confirmed:
            await self.remove(confirmed)
            report.replayed += len(confirmed)
        errors = [error for error in results if error is not None]
        if errors:
            report.failed += len(errors)
            report.error = f"{type(errors[0]).__name__}: {errors[0]}"
            return False
        return True

    async def purge(
        self,
        selection: Selection = EVERYTHING,
        *,
        dry_run: bool = False,
        batch: int = 500,
        progress: PurgeProgress | None = None,
        total: int | None = None,
    ) -> PurgeReport:
        """Remove the selected dead letters for good (``dry_run``: only count them)."""
        _check_batch(batch)
        report = PurgeReport(dry_run=dry_run, total=total)
        pending: builtins.list[DeadLetter] = []
        try:
            async with contextlib.aclosing(self.selected(selection)) as letters:
                async for letter in letters:
                    report.selected += 1
                    if dry_run:
                        continue
                    pending.append(letter)
                    if len(pending) >= batch:
                        await self.remove(pending)
                        report.removed += len(pending)
                        pending = []
                        if progress is not None:
                            progress(report)
                if pending:
                    await self.remove(pending)
                    report.removed += len(pending)
        finally:
            await self.release()
        if progress is not None:
            progress(report)
        return report


def _check_batch(batch: int) -> None:
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConfigurationError(f"batch must be an int >= 1, got {batch!r}")


def original_topic(headers: Mapping[str, str], default: str = "") -> str:
    """The original topic a dead letter's headers name."""
    return headers.get("x-dispytch-original-topic", default)
