"""Test helpers: wait on conditions with a deadline, never sleep-and-hope."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


async def eventually(
    check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10.0
) -> None:
    """Poll an async condition until it holds; fail after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if await check():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


def listed_brokers() -> set[str]:
    """Backend names in ``DISPYTCH_BROKERS`` (comma-separated), which ``scripts/test.sh`` sets."""
    return {b.strip() for b in os.environ.get("DISPYTCH_BROKERS", "").split(",") if b.strip()}


def require_broker(name: str, port: int) -> None:
    """Skip unless ``name`` is listed; fail (not skip) when it is listed but does not answer."""
    if name not in listed_brokers():
        import pytest

        pytest.skip(f"{name} not in DISPYTCH_BROKERS")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        import pytest

        pytest.fail(
            f"{name} is listed in DISPYTCH_BROKERS but 127.0.0.1:{port} does not answer; "
            "run: bash scripts/brokers.sh up"
        )


def is_utf8(raw: bytes) -> bool:
    """Whether ``raw`` decodes as UTF-8."""
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True
