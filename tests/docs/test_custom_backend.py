"""docs/backends/custom.md: the page shows examples/queue_backend.py, piece by piece, and that
backend passes the conformance suite the way the page says to run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docs.markdown_blocks import python_blocks

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "backends" / "custom.md"
EXAMPLE = ROOT / "examples" / "queue_backend.py"
MARK = "# queue_backend.py"
NO_CACHE = ["-p", "no:cacheprovider"]


def _lines(code: str) -> list[str]:
    return [line for line in code.splitlines() if line.strip()]


def test_the_page_shows_the_whole_example_module() -> None:
    shown = [b.code for b in python_blocks(PAGE) if b.code.startswith(MARK)]
    assert len(shown) == 4
    page_code = [line for code in shown for line in _lines(code)[1:]]  # without the marks
    module = _lines(EXAMPLE.read_text())[1:]  # without its header comment
    assert page_code == module


@pytest.mark.timeout(300)
def test_the_example_backend_passes_the_conformance_suite() -> None:
    env = {
        **os.environ,
        "DISPYTCH_CONFORMANCE_BACKEND": "queue_backend:QueueBackend",
        "DISPYTCH_CONFORMANCE_URL": "queue://",
        "DISPYTCH_BROKERS": "",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "examples"), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/conformance", "-k", "custom", "-q", *NO_CACHE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failed" not in run.stdout
