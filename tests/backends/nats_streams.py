"""Clean-up for tests that create JetStream streams (deleting a stream deletes its consumers)."""

from __future__ import annotations

import contextlib


async def delete_streams(url: str, *names: str) -> None:
    import nats
    import nats.js.errors

    nc = await nats.connect(url, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        for name in names:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
    finally:
        await nc.close()
