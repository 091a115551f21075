"""Every Python code block in README.md and docs/ runs (see markdown_blocks for the rules)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.markdown_blocks import Block, python_blocks, run_blocks

ROOT = Path(__file__).resolve().parents[2]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: Blocks allowed to be skipped in all files together (each needs a reason in its marker).
MAX_SKIPS = 4


@pytest.fixture(autouse=True)
def _examples_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    monkeypatch.delenv("DISPYTCH_BROKER_URL", raising=False)


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_code_blocks_run(path: Path) -> None:
    blocks = python_blocks(path)
    ran = run_blocks(blocks)
    assert ran == sum(not b.skip for b in blocks)


def test_skips_are_rare_and_give_a_reason() -> None:
    skipped = [b for path in FILES for b in python_blocks(path) if b.skip]
    assert len(skipped) <= MAX_SKIPS, [f"{b.path.name}:{b.line}" for b in skipped]
    for block in skipped:
        line = block.path.read_text().splitlines()[block.line - 2]
        assert "(" in line, f"{block.path.name}:{block.line}: say why it is skipped"


def test_the_runner_fails_on_a_broken_block(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        'Text\n\n```python\nfrom dispytch import App\napp = App("kafka://h:9092")\n'
        "assert app.backend.url == 'memory://docs'\n```\n\n"
        "<!-- docs-test: skip (never runs) -->\n```python\nraise SystemExit\n```\n\n"
        "```python\nasync def test_x():\n    raise ValueError('boom')\n```\n"
    )
    blocks = python_blocks(page)
    assert [(b.line, b.skip) for b in blocks] == [(3, False), (10, True), (14, False)]
    with pytest.raises(AssertionError, match=r"page.md:14 failed: ValueError\('boom'\)"):
        run_blocks(blocks)
    assert run_blocks(blocks[:2]) == 1


def test_top_level_await_runs() -> None:
    code = "import asyncio\nawait asyncio.sleep(0)\ndone = True\n"
    assert run_blocks([Block(Path("x.md"), 1, code, False)]) == 1
