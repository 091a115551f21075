"""docs/middleware.md's complete example, executed the way the page says to test it."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _block(marker: str) -> str:
    page = (ROOT / "docs" / "middleware.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", page, re.S) if marker in b]
    return block


async def test_the_complete_example_and_its_test_run(caplog: pytest.LogCaptureFixture) -> None:
    namespace: dict[str, object] = {"__name__": "shop_service"}
    exec(compile(_block("# shop/service.py"), "docs-middleware-service", "exec"), namespace)
    exec(compile(_block("# tests/test_service.py"), "docs-middleware-test", "exec"), namespace)
    with caplog.at_level(logging.INFO, logger="shop.events"):
        await namespace["test_a_shipment_carries_the_orders_correlation_id"]()  # type: ignore[operator]
    lines = [r.getMessage() for r in caplog.records if r.name == "shop.events"]
    assert any(
        re.fullmatch(r"order_placed \S+ via orders: handled in [\d.]+ ms", li) for li in lines
    )


def test_the_first_snippet_registers() -> None:
    namespace: dict[str, object] = {"__name__": "audit_snippet"}
    exec(compile(_block("class Audit(Middleware)"), "docs-middleware-audit", "exec"), namespace)
    app = namespace["app"]
    assert [type(m).__name__ for m in app.middleware] == ["Audit"]  # type: ignore[attr-defined]
