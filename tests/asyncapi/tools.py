"""The real tools the AsyncAPI tests use: Node with the official AsyncAPI packages, Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
ROOT = Path(__file__).resolve().parents[2]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def node_checker() -> Path:
    """``validate.mjs`` with its packages installed (``npm ci`` from the lock file once).

    Skips only when Node itself is missing; an install that fails fails the test.
    """
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed")
    marker = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not marker.exists() or marker.stat().st_mtime < lock.stat().st_mtime:
        started = time.monotonic()
        result = subprocess.run(
            ["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
        print(f"npm ci in {NODE_DIR} took {time.monotonic() - started:.1f}s")
    return NODE_DIR / "validate.mjs"


def check_documents(paths: list[Path]) -> list[dict]:
    """Run the official schema and parser over ``paths``; one report per file."""
    script = node_checker()
    result = subprocess.run(
        ["node", str(script), *map(str, paths)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def chromium() -> str:
    """The Chromium binary; installed with the project's script when missing (root only)."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0:
        subprocess.run(["bash", str(ROOT / "scripts" / "brokers.sh"), "tools"], check=True)
        found = shutil.which("chromium")
    if found is None:
        pytest.fail("chromium is not installed; run: sudo bash scripts/brokers.sh tools")
    return found


def run_chromium(url: str, *args: str, timeout: float = 90) -> str:
    """Load ``url`` in headless Chromium with a fresh profile; returns its stdout."""
    with tempfile.TemporaryDirectory(prefix="dispytch-chromium-") as profile:
        result = subprocess.run(
            [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout
