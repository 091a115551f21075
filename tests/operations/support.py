"""``dispytch run`` as a subprocess for the operations tests: its log lines, its probe URL,
HTTP GETs against it, and a stop that always reaps it."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: No proxy from the environment: every request here goes to 127.0.0.1.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_URL = re.compile(r"serving /healthz, /readyz and /metrics on (http://\S+)")


class Service:
    """``python -m dispytch run svc:app ARGS`` in ``directory``, its stderr collected."""

    def __init__(self, directory: Path, source: str, *args: str, env: dict[str, str] | None = None):
        (directory / "svc.py").write_text(textwrap.dedent(source))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dispytch", "run", "svc:app", *args],
            cwd=directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 30.0, count: int = 1) -> list[str]:
        """Wait until ``count`` output lines match ``pattern`` (a regex); return them."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in list(self.lines) if regex.search(line)]
            if len(found) >= count:
                return found
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"service exited ({self.proc.returncode}):\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout}s:\n{self.output}")
            time.sleep(0.02)

    def urls(self, count: int = 1, timeout: float = 30.0) -> list[str]:
        """The probe server URLs the service logged (one per worker)."""
        lines = self.wait_for(_URL.pattern, timeout, count)
        return [m.group(1) for line in lines if (m := _URL.search(line))]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


def poll(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Call ``check`` every 50 ms until it returns true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def free_ports(count: int) -> int:
    """A port ``p`` such that ``p`` ... ``p + count - 1`` are free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError(f"no {count} consecutive free ports found")


def get(url: str, timeout: float = 5.0) -> tuple[int, str, str]:
    """``(status, content type, body)`` of a GET, errors included."""
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def get_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    status, _, body = get(url, timeout)
    return status, json.loads(body)
