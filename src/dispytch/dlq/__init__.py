"""Dead letters you can operate: list, show, replay and purge them, from Python or with
``dispytch dlq`` (see :mod:`dispytch.dlq.cli`).

::

    from dispytch.dlq import Selection, open_store

    async with open_store("redis+streams://127.0.0.1:6379/0") as store:   # or an App
        for summary in await store.list():
            print(summary.topic, summary.count, dict(summary.reasons))
        report = await store.replay(Selection.build(topics=["orders"], reasons=["handler"]))

Each backend keeps its dead letters its own way (see the docs' dead-letters page); the
operations and their guarantees are the same everywhere (see :mod:`dispytch.dlq.store`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from dispytch.dlq.selection import EVERYTHING, Selection, decode_envelope, event_id, parse_time
from dispytch.dlq.store import (
    DEFAULT_BATCH,
    REPLAY_COUNT_HEADER,
    REPLAYED_AT_HEADER,
    DeadLetterStore,
    PurgeReport,
    ReplayReport,
    TopicSummary,
    replay_message,
)

if TYPE_CHECKING:
    from dispytch.app import App
    from dispytch.backend import Backend

__all__ = [
    "DEFAULT_BATCH",
    "EVERYTHING",
    "REPLAYED_AT_HEADER",
    "REPLAY_COUNT_HEADER",
    "DeadLetterStore",
    "PurgeReport",
    "ReplayReport",
    "Selection",
    "TopicSummary",
    "decode_envelope",
    "event_id",
    "open_store",
    "parse_time",
    "replay_message",
]


@asynccontextmanager
async def open_store(
    source: App | Backend | str, *, group: str | None = None, **backend_options: Any
) -> AsyncIterator[DeadLetterStore]:
    """The dead-letter store of ``source``: an :class:`~dispytch.app.App` (its backend and
    ``group``), a :class:`~dispytch.backend.Backend`, or a broker URL (``backend_options`` go
    to its backend).

    ``group`` names the consumer group whose fallback destination (and, on RabbitMQ, whose
    dead-letter queue) to read; without it, an app's group, else every group the backend can
    find. A backend opened here is connected and closed here; the backend of an app that is
    running is used as it is.
    """
    from dispytch.app import App
    from dispytch.backend import backend_from_url

    owned = True
    if isinstance(source, App):
        backend = source.backend
        group = group or source.group
        owned = not source.started
    elif isinstance(source, str):
        backend = backend_from_url(source, **backend_options)
    else:
        backend = source
    if owned:
        await backend.connect()
    try:
        store = backend.dead_letter_store(group)
        try:
            yield store
        finally:
            await store.close()
    finally:
        if owned:
            await backend.close()
