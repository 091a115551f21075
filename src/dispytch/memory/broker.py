from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dispytch.broker_retries import RETRY_DESTINATION_PREFIX
from dispytch.dead_letter import DEAD_LETTER_FALLBACK_PREFIX, DEAD_LETTER_SUFFIX, DeadLetter
from dispytch.routing import TopicPattern

__all__ = ["DeadLetter", "MemoryBroker", "Record"]


@dataclass(slots=True)
class Record:
    topic: str
    offset: int
    payload: bytes
    key: bytes | None
    headers: Mapping[str, str]
    #: removed from its topic (a replayed or purged dead letter); consumers skip it
    removed: bool = False


@dataclass(slots=True)
class _Group:
    name: str
    matchers: list[tuple[str | None, re.Pattern[str] | None]] = field(default_factory=list)
    cursors: dict[str, int] = field(default_factory=dict)
    ready: deque[str] = field(default_factory=deque)  # topics that may have unread records
    redeliver: deque[Record] = field(default_factory=deque)
    attempts: dict[tuple[str, int], int] = field(default_factory=dict)
    unacked: int = 0
    waiters: list[asyncio.Future[None]] = field(default_factory=list)

    def matches(self, topic: str) -> bool:
        # A pattern never matches a dead-letter destination (``orders:{kind}`` would match
        # ``orders:x.dlq`` and handle its own dead letters again); a literal topic may.
        is_dead_letter = (
            topic.endswith(DEAD_LETTER_SUFFIX)
            or topic.startswith(DEAD_LETTER_FALLBACK_PREFIX)
            or topic.startswith(RETRY_DESTINATION_PREFIX)
        )
        for literal, regex in self.matchers:
            if literal == topic:
                return True
            if regex is not None and not is_dead_letter and regex.match(topic):
                return True
        return False


class MemoryBroker:
    """The in-process broker. Loop-agnostic: it keeps no asyncio primitive between calls."""

    def __init__(self) -> None:
        self._logs: dict[str, list[Record]] = {}
        self._groups: dict[str, _Group] = {}
        self._idle_waiters: list[asyncio.Future[None]] = []
        #: records waiting for their time: (due, seq, topic, payload, key, headers)
        self._delayed: list[tuple[float, int, str, bytes, bytes | None, Mapping[str, str]]] = []
        self._seq = itertools.count()

    # -- producing ----------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        key: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Record:
        """Append a record to ``topic``. What a consumer receives is always well formed, as
        from a broker: a ``str`` key is encoded, header names and values become text (bytes
        decoded, escaping what is not UTF-8); a topic that is not text, a payload or key that
        is not bytes raise ``TypeError`` here, at the publisher."""
        if not isinstance(topic, str):
            raise TypeError(f"a memory topic is text, not {type(topic).__name__}")
        if isinstance(key, str):
            key = key.encode()
        elif key is not None:
            if not isinstance(key, bytes | bytearray | memoryview):
                raise TypeError(f"a record key is bytes or None, not {type(key).__name__}")
            key = bytes(key)
        text_headers = {_text(k): _text(v) for k, v in (headers or {}).items()}
        log = self._logs.get(topic)
        if log is None:
            log = self._logs[topic] = []
            for group in self._groups.values():
                if group.matches(topic):
                    group.cursors[topic] = 0
        record = Record(topic, len(log), bytes(payload), key, text_headers)
        log.append(record)
        for group in self._groups.values():
            if topic in group.cursors:
                group.ready.append(topic)
                _wake(group.waiters)
        return record

    def publish_later(
        self,
        delay: float,
        topic: str,
        payload: bytes,
        key: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Append a record to ``topic`` in ``delay`` seconds (a consumer fetching moves it
        when due; until then it counts as pending)."""
        due = time.monotonic() + max(delay, 0.0)
        heapq.heappush(
            self._delayed, (due, next(self._seq), topic, bytes(payload), key, dict(headers or {}))
        )
        for group in self._groups.values():
            _wake(group.waiters)  # a fetch may have to wait less now

    def _release_due(self) -> float | None:
        """Publish the delayed records that are due; seconds until the next one (or None)."""
        delayed = self._delayed
        now = time.monotonic()
        while delayed and delayed[0][0] <= now:
            _, _, topic, payload, key, headers = heapq.heappop(delayed)
            self.publish(topic, payload, key, headers)
        return delayed[0][0] - now if delayed else None

    def records(self, topic: str) -> list[Record]:
        """Every record ever published to ``topic``."""
        return list(self._logs.get(topic, ()))

    def dead_letters(self, topic: str | None = None) -> list[DeadLetter]:
        """Dead letters of ``topic`` (or of every topic), oldest first; those in the fallback
        destinations (``dispytch.dlq.<group>``) after the others."""
        out: list[DeadLetter] = []
        fallback: list[DeadLetter] = []
        for r in self.dead_letter_records():
            if r.topic.startswith(DEAD_LETTER_FALLBACK_PREFIX):
                original = r.headers.get("x-dispytch-original-topic", "")
                if topic is None or topic == original:
                    fallback.append(DeadLetter(original, r.payload, r.headers, r.key))
            else:
                original = r.topic[: -len(DEAD_LETTER_SUFFIX)]
                if topic is None or topic == original:
                    out.append(DeadLetter(original, r.payload, r.headers, r.key))
        return out + fallback

    def dead_letter_records(self) -> list[Record]:
        """The records of every dead-letter topic (``<topic>.dlq`` and the groups' fallback
        ``dispytch.dlq.<group>``) not removed, each topic oldest first."""
        return [
            record
            for name, log in list(self._logs.items())
            if name.startswith(DEAD_LETTER_FALLBACK_PREFIX) or name.endswith(DEAD_LETTER_SUFFIX)
            for record in log
            if not record.removed
        ]

    def remove(self, record: Record) -> None:
        """Remove ``record`` from its topic: no consumer receives it from now on (its offset
        stays taken, as in a log with deleted entries)."""
        record.removed = True

    def replay(self, dead_letter: DeadLetter) -> None:
        """Publish a dead letter's original bytes to its original topic again."""
        self.publish(dead_letter.topic, dead_letter.payload, dead_letter.key)

    # -- consuming ----------------------------------------------------------------------------

    def subscribe(self, group_name: str, patterns: Sequence[TopicPattern]) -> None:
        group = self._groups.setdefault(group_name, _Group(group_name))
        for pattern in patterns:
            if pattern.is_literal:
                group.matchers.append((pattern.raw, None))
            else:
                group.matchers.append((None, re.compile(pattern.regex)))
        for topic, log in self._logs.items():
            if topic not in group.cursors and group.matches(topic):
                group.cursors[topic] = 0
                if log:
                    group.ready.append(topic)
        _wake(group.waiters)

    async def fetch(self, group_name: str) -> tuple[Record, int]:
        """The group's next record and its delivery attempt; waits until there is one."""
        group = self._groups[group_name]
        while True:
            wait = self._release_due() if self._delayed else None
            if group.redeliver:
                record = group.redeliver.popleft()
                break
            record_or_none = self._next_unread(group)
            if record_or_none is not None:
                record = record_or_none
                break
            waiter = asyncio.get_running_loop().create_future()
            group.waiters.append(waiter)
            try:
                await asyncio.wait((waiter,), timeout=wait)
            finally:
                if waiter in group.waiters:
                    group.waiters.remove(waiter)
        ident = (record.topic, record.offset)
        attempt = group.attempts.get(ident, 0) + 1
        group.attempts[ident] = attempt
        group.unacked += 1
        return record, attempt

    def _next_unread(self, group: _Group) -> Record | None:
        while group.ready:
            topic = group.ready[0]
            cursor = group.cursors[topic]
            log = self._logs[topic]
            if cursor < len(log):
                group.cursors[topic] = cursor + 1
                if cursor + 1 >= len(log):
                    group.ready.popleft()
                elif len(group.ready) > 1:
                    group.ready.rotate(-1)  # take turns between topics
                if log[cursor].removed:
                    continue
                return log[cursor]
            group.ready.popleft()
        return None

    def settle(self, group_name: str, record: Record, *, redeliver: bool) -> None:
        group = self._groups[group_name]
        group.unacked -= 1
        if redeliver:
            # Hand records back in log order, whatever order they were nacked in (a consumer
            # closing nacks several at once), so redelivery keeps per-key order, as a broker
            # rewinding to the oldest unsettled offset does.
            bisect.insort(group.redeliver, record, key=_log_order)
            _wake(group.waiters)
        else:
            group.attempts.pop((record.topic, record.offset), None)
        if not redeliver and self._idle_waiters and self.pending() == 0:
            _wake(self._idle_waiters)

    # -- inspecting ---------------------------------------------------------------------------

    def pending(self, group_name: str | None = None) -> int:
        """Messages not yet acked by ``group_name`` (or by any group): unread, in flight, or
        waiting for redelivery. Dead-letter topics count only for groups that subscribe to them.
        """
        groups = [self._groups[group_name]] if group_name else list(self._groups.values())
        total = sum(1 for d in self._delayed if any(g.matches(d[2]) for g in groups))
        for group in groups:
            total += group.unacked + len(group.redeliver)
            for topic, cursor in group.cursors.items():
                total += len(self._logs[topic]) - cursor
        return total

    def lag(self, group_name: str) -> dict[str, int]:
        """Records of each topic ``group_name`` has not read yet (and those waiting for
        redelivery), topics with none left out."""
        group = self._groups.get(group_name)
        if group is None:
            return {}
        out = {
            topic: len(self._logs[topic]) - cursor
            for topic, cursor in group.cursors.items()
            if len(self._logs[topic]) > cursor
        }
        for record in group.redeliver:
            out[record.topic] = out.get(record.topic, 0) + 1
        return out

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Return once every group acked everything published so far; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while self.pending():
                waiter = asyncio.get_running_loop().create_future()
                self._idle_waiters.append(waiter)
                try:
                    await waiter
                finally:
                    if waiter in self._idle_waiters:
                        self._idle_waiters.remove(waiter)


def _text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "backslashreplace")
    return str(value)


def _log_order(record: Record) -> tuple[str, int]:
    return record.topic, record.offset


def _wake(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)
    waiters.clear()
