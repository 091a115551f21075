"""``/readyz`` of ``dispytch run --http`` turns not-ready within seconds when the broker stops, and
ready again once it is back. The broker is a PRIVATE one this test starts with
``scripts/brokers.sh`` (own run dir and port), never the shared one."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from dispytch import App, EventBase
from tests.faults.harness import brokers_sh
from tests.helpers import listed_brokers
from tests.operations.support import Service, free_ports, get_json, poll

SERVICE = """
import os
from dispytch import App, Event

app = App(os.environ["OPS_URL"], group="ops_ready", health_interval=0.5, **OPTIONS)

@app.handler(topic="ops_ready", event="ping")
async def ping(event: Event[dict]) -> None:
    print("HANDLED", event.id, flush=True)
"""


async def emit_and_see_handled(url: str, options: dict[str, Any], service: Service) -> None:
    app = App(url, group="ops_ready_emitter", **options)
    async with app:
        event = Ping()
        await app.emit(event)
    await asyncio.to_thread(service.wait_for, f"HANDLED {event.id}", 60.0)


def broker_logs(run_dir: Path) -> str:
    """The broker's logs (start and end), for a failure message; the run dir is kept then."""
    texts = [p.read_text(errors="replace") for p in run_dir.rglob("*.log")]
    return f"(run dir {run_dir} kept)\n" + "\n".join(
        t[:2000] + "\n...\n" + t[-3000:] for t in texts
    )


class Ping(EventBase):
    __topic__ = "ops_ready"
    __event_type__ = "ping"


#: backend -> (brokers.sh service, port variable, URL template, app options)
PRIVATE = {
    "redis_streams": ("redis", "REDIS_PORT", "redis+streams://127.0.0.1:{port}/0", {}),
    "nats": ("nats", "NATS_PORT", "nats://127.0.0.1:{port}", {"stream": "ops_ready"}),
}


@pytest.mark.fault
@pytest.mark.parametrize("name", list(PRIVATE))
async def test_readyz_follows_the_broker_down_and_back(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if name not in listed_brokers():
        pytest.skip(f"{name} not in DISPYTCH_BROKERS")
    service_name, variable, url, options = PRIVATE[name]
    port = free_ports(1)
    run_dir = Path(f"/tmp/dispytch-ops-{os.getpid()}-{port}")
    # brokers.sh reads these from the environment: a private run dir and port.
    monkeypatch.setenv("BROKERS_RUN_DIR", str(run_dir))
    monkeypatch.setenv(variable, str(port))
    await brokers_sh("up", service_name)
    service = None
    passed = False
    try:
        source = SERVICE.replace("**OPTIONS", "**" + repr(options))
        env = {**os.environ, "OPS_URL": url.format(port=port)}
        service = Service(tmp_path, source, "--http", "127.0.0.1:0", env=env)
        (probe,) = service.urls()
        await asyncio.to_thread(poll, lambda: get_json(probe + "/readyz")[0] == 200, "ready")
        await emit_and_see_handled(env["OPS_URL"], options, service)

        stopped = time.monotonic()
        await brokers_sh("down", service_name)
        if passed:
            shutil.rmtree(run_dir, ignore_errors=True)
        await asyncio.to_thread(
            poll, lambda: get_json(probe + "/readyz")[0] == 503, "not ready", 15.0
        )
        took = time.monotonic() - stopped
        _, body = get_json(probe + "/readyz")
        assert body["connected"] is False and "broker does not answer" in body["reason"], body
        assert get_json(probe + "/healthz") == (200, {"status": "ok"})  # alive all along
        assert took < 10, f"not ready only after {took:.1f}s"

        back = time.monotonic()
        await brokers_sh("up", service_name)
        try:
            await asyncio.to_thread(
                poll, lambda: get_json(probe + "/readyz")[0] == 200, "ready again", 60.0
            )
        except AssertionError:
            logs = broker_logs(run_dir)
            raise AssertionError(
                f"{get_json(probe + '/readyz')}\n{service.output}\n{logs}"
            ) from None
        await emit_and_see_handled(env["OPS_URL"], options, service)  # and it works again
        passed = True
        print(
            f"{name}: not ready {took:.1f}s after the stop, ready "
            f"{time.monotonic() - back:.1f}s after the restart"
        )
    finally:
        if service is not None:
            service.stop()
        await brokers_sh("down", service_name)
        if passed:
            shutil.rmtree(run_dir, ignore_errors=True)
