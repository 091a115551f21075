"""Python code blocks of Markdown files, and how the tests run them.

* Every ```python block of a file runs, in order, in one namespace per file (later blocks see
  what earlier ones defined), with ``examples/`` importable.
* Broker URLs (``kafka://...``, ``amqp://...``, ``redis://...``, ``nats://...``...) become
  ``memory://docs``, so blocks that build an App run without a broker.
* Top-level ``await`` works (one event loop per file); ``async def test_*`` / ``def test_*``
  functions a block defines are called right after it, so testing examples really run.
* A block that cannot run (it needs clients you built yourself, or runs forever) is preceded
  by ``<!-- docs-test: skip (reason) -->``. Keep these rare.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SKIP = re.compile(r"<!--\s*docs-test:\s*skip\b[^>]*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
BROKER_URL = re.compile(
    r"""(["'])(?:kafka|amqps?|rediss?(?:\+streams)?|nats(?:\+core)?)://[^"']*\1"""
)


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    skip: bool


def python_blocks(path: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent, lang = match.groups()
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and not re.match(rf"^{indent}```\s*$", lines[i]):
            body.append(lines[i][len(indent) :])
            i += 1
        i += 1
        if lang == "python":
            previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            blocks.append(
                Block(path, start + 1, "\n".join(body) + "\n", bool(SKIP.search(previous)))
            )
    return blocks


def run_blocks(blocks: list[Block]) -> int:
    """Run the blocks of one file; returns how many ran. Raises on the first failure, naming
    the file and line."""
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    loop = asyncio.new_event_loop()
    ran = 0
    try:
        for block in blocks:
            if block.skip:
                continue
            source = BROKER_URL.sub('"memory://docs"', block.code)
            where = f"{block.path.name}:{block.line}"
            try:
                # dont_inherit: this module's `from __future__ import annotations` must not apply.
                flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
                code = compile(source, where, "exec", flags=flags, dont_inherit=True)
                before = set(namespace)
                result = eval(code, namespace)
                if inspect.iscoroutine(result):
                    loop.run_until_complete(result)
                for name in [n for n in namespace if n not in before and n.startswith("test_")]:
                    outcome = namespace[name]()
                    if inspect.iscoroutine(outcome):
                        loop.run_until_complete(outcome)
            except BaseException as exc:
                raise AssertionError(f"code block at {where} failed: {exc!r}") from exc
            ran += 1
    finally:
        loop.close()
    return ran
