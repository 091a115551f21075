"""The consume-transform-produce service of the Kafka exactly-once test, run in its own process
(``python -m dispytch run tests.backends.eos_app:build``) so the test can SIGKILL it.

``EOS_INPUT`` / ``EOS_OUTPUT`` topics, ``EOS_GROUP``, ``EOS_TRANSACTIONAL_ID`` (empty: no
transactions, for comparison), ``EOS_DELAY`` seconds per handler call.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from dispytch import App, Event, EventBase


class Seq(BaseModel):
    seq: int


def build() -> App:
    delay = float(os.environ.get("EOS_DELAY") or 0)
    output = os.environ["EOS_OUTPUT"]

    class Doubled(EventBase):
        __topic__ = output
        __event_type__ = "doubled"
        seq: int
        doubled: int

    options = {}
    if os.environ.get("EOS_TRANSACTIONAL_ID"):
        options["transactional_id"] = os.environ["EOS_TRANSACTIONAL_ID"]
    app = App(group=os.environ["EOS_GROUP"], concurrency=16, **options)

    @app.handler(topic=os.environ["EOS_INPUT"], event="numbered")
    async def double(event: Event[Seq]) -> EventBase:
        if delay:
            await asyncio.sleep(delay)
        return Doubled(seq=event.body.seq, doubled=2 * event.body.seq)

    return app
