"""The README's and the seed's examples, executed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from dispytch import App, EventEmitter
from dispytch.memory import MemoryBroker, MemoryProducer
from dispytch.testing import TestClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _import_examples() -> None:
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))


def test_seed_examples_are_verbatim_in_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in ("seed_emit.py", "seed_handle.py"):
        code = (EXAMPLES / name).read_text().split("\n", 1)[1]  # drop the comment line
        assert code.strip() in readme, f"{name} differs from the README"


async def test_seed_examples_emit_and_handle_in_memory(capsys) -> None:
    _import_examples()
    from seed_emit import example_emit
    from seed_handle import user_events
    from service import get_user_service

    app = App("memory://seed-examples")
    app.add_handler_group(user_events)
    before = len(get_user_service().users)
    async with TestClient(app) as client:
        await example_emit(app.emitter)
        await client.wait_idle()
        assert len(client.handled) == 1
        assert client.dead_letters == []
    assert len(get_user_service().users) == before + 1
    assert re.search(
        r"\[User Registered\] [0-9a-f-]{36} - example@mail.com at \d+", capsys.readouterr().out
    )


async def test_seed_emit_with_a_plain_emitter_writes_the_envelope() -> None:
    _import_examples()
    from seed_emit import example_emit

    broker = MemoryBroker()
    await example_emit(EventEmitter(MemoryProducer(broker)))
    (record,) = broker.records("user_events")
    assert record.payload.startswith(b'{"id": "')
    assert b'"type": "user_registered", "body": {"user": {"id": ' in record.payload


def test_demo_command_runs() -> None:
    out = subprocess.run(
        [sys.executable, "examples/demo.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "[User Registered]" in out
    assert "[Order Charged] shop 7 order 1 via gateway-ok" in out
    assert "handled:       2 event(s)" in out
    assert re.search(r"dead-lettered: shop:7:orders after \d attempt\(s\): ValueError", out)


def _wait_for_lines(proc: subprocess.Popen[str], text: str, count: int, timeout: float) -> None:
    """Read the process's stdout until ``text`` appeared ``count`` times, with a deadline.

    Reads the raw file descriptor: a buffered ``readline`` could swallow two lines at once and
    leave ``select`` waiting for data that already arrived.
    """
    import os
    import selectors
    import time

    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while seen.count(text) < count:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise AssertionError(
                    f"saw {text!r} {seen.count(text)}/{count} times before the deadline"
                )
            if selector.select(timeout=left):
                chunk = os.read(fd, 4096).decode()
                if not chunk:
                    raise AssertionError(f"stdout closed after {seen.count(text)} {text!r}")
                seen += chunk


def test_dispytch_run_stops_gracefully_on_sigterm(tmp_path: Path) -> None:
    import signal

    (tmp_path / "svc.py").write_text(
        "from dispytch import App, Event\n"
        "app = App('memory://cli')\n"
        "@app.handler(topic='t', event='e')\n"
        "async def h(event: Event): ...\n"
        "@app.on_startup\n"
        "def ready():\n"
        "    print('READY', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispytch", "run", "svc:app"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for_lines(proc, "READY", 1, timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert "stopped App('memory://cli'" in (proc.stderr.read() if proc.stderr else "")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_dispytch_run_workers_drain_once_on_ctrl_c(tmp_path: Path) -> None:
    """Ctrl-C hits the whole foreground process group; each worker must see it once."""
    import os
    import signal

    (tmp_path / "svc.py").write_text(
        "from dispytch import App, Event\n"
        "app = App('memory://cli')\n"
        "@app.handler(topic='t', event='e')\n"
        "async def h(event: Event): ...\n"
        "@app.on_startup\n"
        "def ready():\n"
        "    print('READY', flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispytch", "run", "svc:app", "--workers", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, like a shell job
    )
    try:
        assert proc.stderr is not None
        _wait_for_lines(proc, "READY", 2, timeout=60)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert err.count("stopped App('memory://cli'") == 2
        assert "second signal" not in err
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def _readme_block(marker: str) -> str:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    (block,) = [b for b in blocks if marker in b]
    return block


async def test_readme_quickstart_service_and_its_test_run() -> None:
    """The README's quickstart service, tested the way the README says to test it."""
    namespace: dict[str, object] = {"__name__": "billing_service"}
    exec(compile(_readme_block("# billing/service.py"), "README-quickstart", "exec"), namespace)
    exec(compile(_readme_block("async def test_welcome"), "README-test", "exec"), namespace)
    await namespace["test_welcome"]()  # type: ignore[operator]
    assert namespace["FakeMailer"].sent == ["a@example.com"]  # type: ignore[attr-defined]
