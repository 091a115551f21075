"""The reply inbox of an app on Kafka: the group's reply topic, filtered by correlation id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from dispytch.backoff import Backoff
from dispytch.request import Deliver, ReplyInbox

__all__ = ["KafkaInbox"]

logger = logging.getLogger("dispytch.kafka")


class KafkaInbox(ReplyInbox):
    """Reads the topic ``address`` (``dispytch.reply.<group>``, one per consumer group, made by
    the broker's auto-creation) from its end, with a consumer outside any group: every process
    of the group reads every reply of the group and keeps the ones whose correlation id it
    waits for. No topic is made per process, so none is left behind by a process that dies;
    the cost is that each requester reads its neighbours' replies too.

    Args:
        make_reader: builds the (unstarted) ``AIOKafkaConsumer``.
        partitions: ``await partitions(topic)`` gives the topic's partitions, creating the
            topic if needed.
        address: the reply topic.
    """

    def __init__(
        self,
        make_reader: Callable[[], AIOKafkaConsumer],
        partitions: Callable[[str], Awaitable[Sequence[int]]],
        address: str,
    ) -> None:
        self._make_reader = make_reader
        self._partitions = partitions
        self.address = address
        self._reader: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver) -> None:
        partitions = await self._partitions(self.address)
        reader = self._make_reader()
        await reader.start()
        try:
            tps = [TopicPartition(self.address, p) for p in sorted(partitions)]
            reader.assign(tps)
            await reader.seek_to_end(*tps)
            for tp in tps:  # positions fixed now: a reply sent from here on is read
                await reader.position(tp)
        except BaseException:
            await reader.stop()
            raise
        self._reader = reader
        self._task = asyncio.create_task(self._read(reader, deliver), name="dispytch-replies")

    async def _read(self, reader: AIOKafkaConsumer, deliver: Deliver) -> None:
        backoff = Backoff(0.5, 10.0)
        while True:
            try:
                batches: dict[Any, list[Any]] = await reader.getmany(timeout_ms=1000)
            except KafkaError as exc:
                delay = backoff.failed()
                logger.warning(
                    "reading replies failed (%s: %s); retrying in %.1fs",
                    type(exc).__name__,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            backoff.succeeded()
            for records in batches.values():
                for record in records:
                    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in record.headers}
                    deliver(record.value or b"", headers)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.stop()
