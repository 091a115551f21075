"""The consumer that ``bench/scale.py`` runs, N times: ``dispytch run bench.scale_app:build``.

Configured by environment variables:

``DISPYTCH_BROKER_URL``  the broker (read by ``App``)
``SCALE_TOPIC``          topic to consume; ``SCALE_GROUP`` the consumer group
``SCALE_OUT``            directory for the record files (one per process)
``SCALE_WORK_US``        CPU time each handler call burns, in microseconds (default 0)
``SCALE_OPTIONS``        JSON object of backend options

Every handled event appends ``<monotonic time> <key> <seq>`` to ``handled-<pid>.log`` (written
in batches, flushed every 100 ms and at shutdown), so the orchestrator can count progress,
compute rates and check per-key order across processes: ``time.monotonic()`` is the same clock
in every process of the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from pydantic import BaseModel

from dispytch import App, Event


class Body(BaseModel):
    key: str
    seq: int
    pad: str = ""


def build() -> App:
    topic = os.environ["SCALE_TOPIC"]
    work = float(os.environ.get("SCALE_WORK_US") or 0) / 1e6
    out = open(  # noqa: SIM115 - closed by the shutdown hook
        os.path.join(os.environ["SCALE_OUT"], f"handled-{os.getpid()}.log"), "a", buffering=1 << 20
    )
    app = App(
        group=os.environ["SCALE_GROUP"],
        concurrency=int(os.environ.get("SCALE_CONCURRENCY") or 64),
        **json.loads(os.environ.get("SCALE_OPTIONS") or "{}"),
    )
    flusher: list[asyncio.Task[None]] = []

    async def flush_often() -> None:
        while True:
            await asyncio.sleep(0.1)
            out.flush()

    @app.on_startup
    def start_flushing() -> None:
        flusher.append(asyncio.create_task(flush_often()))

    @app.on_shutdown
    def close_records() -> None:
        for task in flusher:
            task.cancel()
        out.flush()
        out.close()

    @app.handler(topic=topic, event="scale_event")
    async def handle(event: Event[Body]) -> None:
        if work:
            end = time.perf_counter() + work
            while time.perf_counter() < end:
                pass
        out.write(f"{time.monotonic():.6f} {event.body.key} {event.body.seq}\n")

    return app
