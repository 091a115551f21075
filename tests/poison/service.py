"""The service the poison corpus attacks: ``python -m dispytch run tests.poison.service:build``
in a process of its own (started by :class:`tests.faults.harness.ConsumerProcess`, which sets
the variables below), or :func:`make_app` in the test process (the memory backend).

``DISPYTCH_BROKER_URL``  the broker (read by ``App``)
``FAULT_TOPIC``          the topic prefix: the handlers listen on ``<prefix><d>{case}`` and
                         ``<prefix><d>two<d>{a}<d>end`` (``<d>``: the backend's delimiter)
``FAULT_GROUP``          the consumer group
``FAULT_RECORDS``        directory of the record files (``handled-<name>-<pid>.log``)
``FAULT_NAME``           names this process's record files
``FAULT_MAX_DELIVERIES`` the app's ``max_deliveries``
``FAULT_OPTIONS``        JSON object of backend options

An event's body is ``{"seq": int, "fail": bool}``: the handler appends ``seq`` to the record
file, or raises for ``fail``. Payloads over :data:`MAX_PAYLOAD_BYTES` are refused by the
deserializer (small enough that every broker carries a larger one). On SIGUSR1 the process
logs one ``corpus-stats skipped=<n>`` line: the messages its consumer skipped so far.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel

from dispytch import App, Event, TopicSegment
from dispytch.serialization.json import JSONDeserializer
from tests.faults.record_file import RecordFile

#: The decode cap of the corpus service: the "huge" case is just above it.
MAX_PAYLOAD_BYTES = 256 * 1024
#: The event type the handlers take.
EVENT_TYPE = "corpus"


class Body(BaseModel):
    seq: int
    fail: bool = False


class CorpusFailure(Exception):
    """What the handler raises for an event whose body says ``fail``."""


def _deserializer() -> JSONDeserializer:
    try:
        return JSONDeserializer(max_payload_bytes=MAX_PAYLOAD_BYTES)
    except TypeError:  # a version without decode caps
        return JSONDeserializer()


def skipped(app: App) -> int:
    """Messages the app's consumer skipped (could neither hand over nor dead-letter)."""
    listener = getattr(app, "listener", None)
    return int(getattr(getattr(listener, "consumer", None), "skipped", 0))


def make_app(
    prefix: str,
    group: str,
    records: Path,
    name: str = "c",
    *,
    max_deliveries: int = 3,
    **options: Any,
) -> App:
    """The corpus service (``options``: ``backend=`` or backend options)."""
    handled = RecordFile(str(records / f"handled-{name}-{os.getpid()}.log"), durable=False)
    app = App(
        group=group,
        deserializer=_deserializer(),
        concurrency=16,
        shutdown_timeout=5.0,
        max_deliveries=max_deliveries,
        **options,
    )
    d = app.topic_delimiter

    async def record(event: Event[Body]) -> None:
        if event.body.fail:
            raise CorpusFailure(f"event {event.body.seq} fails by design")
        handled.add(event.body.seq)

    @app.handler(topic=f"{prefix}{d}{{case}}", event=EVENT_TYPE)
    async def one_segment(event: Event[Body], case: Annotated[str, TopicSegment()]) -> None:
        await record(event)

    @app.handler(topic=f"{prefix}{d}two{d}{{a}}{d}end", event=EVENT_TYPE)
    async def two_segments(event: Event[Body], a: Annotated[str, TopicSegment()]) -> None:
        await record(event)

    return app


def build() -> App:
    app = make_app(
        os.environ["FAULT_TOPIC"],
        os.environ["FAULT_GROUP"],
        Path(os.environ["FAULT_RECORDS"]),
        os.environ.get("FAULT_NAME", "c"),
        max_deliveries=int(os.environ.get("FAULT_MAX_DELIVERIES") or 3),
        **json.loads(os.environ.get("FAULT_OPTIONS") or "{}"),
    )

    def report() -> None:
        logging.getLogger("corpus").info("corpus-stats skipped=%d", skipped(app))

    @app.on_startup
    def report_on_sigusr1() -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report)

    return app
