"""The one backoff every reconnect and retry loop uses: capped, exponential, with jitter."""

from __future__ import annotations

import ast
import pathlib

import pytest

from dispytch.backoff import Backoff, backoff_delay

SRC = pathlib.Path(__file__).resolve().parents[2] / "src" / "dispytch"


def test_doubles_from_initial_up_to_the_cap() -> None:
    delays = [backoff_delay(n, 0.5, 4.0, jitter=0) for n in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_a_long_outage_stays_capped_without_overflow() -> None:
    assert backoff_delay(100_000, 0.05, 10.0, jitter=0) == 10.0


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 0.5), (0.5, 1.0), (1.0, 1.5)])
def test_jitter_spreads_each_wait_both_ways(rand: float, expected: float) -> None:
    assert backoff_delay(1, 1.0, 10.0, 0.5, rand=lambda: rand) == pytest.approx(expected)


def test_factor_one_is_a_fixed_wait() -> None:
    assert [backoff_delay(n, 0.2, 0.2, 0, factor=1.0) for n in (1, 5, 50)] == [0.2] * 3


def test_backoff_counts_failures_and_starts_over_after_a_success() -> None:
    backoff = Backoff(0.1, 1.0, jitter=0)
    assert [backoff.failed() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.succeeded() == 6
    assert backoff.failures == 0
    assert backoff.failed() == 0.1


def test_consecutive_waits_are_not_in_step() -> None:
    waits = {Backoff(1.0, 10.0).failed() for _ in range(50)}
    assert len(waits) > 1 and all(0.5 <= w <= 1.5 for w in waits)


def _target(node: ast.Assign) -> str:
    target = node.targets[0]
    return target.id if isinstance(target, ast.Name) else getattr(target, "attr", "")


def _is_doubling(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Assign)
        and any(word in _target(node) for word in ("backoff", "delay", "wait", "interval"))
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
        and node.value.func.id == "min"
        and any(
            isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Mult) for arg in node.value.args
        )
    )


def _doubling_loops(tree: ast.AST) -> list[int]:
    """Lines of ``backoff = min(backoff * 2, cap)`` (a wait of its own, without jitter)."""
    return [node.lineno for node in ast.walk(tree) if _is_doubling(node)]


def test_no_loop_keeps_a_backoff_of_its_own() -> None:
    own = {
        str(path.relative_to(SRC)): lines
        for path in SRC.rglob("*.py")
        if path.name != "backoff.py" and (lines := _doubling_loops(ast.parse(path.read_text())))
    }
    assert own == {}


def _is_fixed_sleep(node: ast.AST) -> bool:
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "sleep"
        and node.args
    ):
        return False
    wait = node.args[0]
    if isinstance(wait, ast.BinOp):
        wait = wait.left
    return isinstance(wait, ast.Constant) and wait.value != 0


def _fixed_sleeps_after_failures(tree: ast.AST) -> list[int]:
    """Lines of ``await asyncio.sleep(<number or number * n>)`` inside an ``except``: a retry
    loop with waits of its own."""
    return [
        node.lineno
        for handler in ast.walk(tree)
        if isinstance(handler, ast.ExceptHandler)
        for node in ast.walk(handler)
        if _is_fixed_sleep(node)
    ]


def test_no_retry_loop_sleeps_a_fixed_time_after_a_failure() -> None:
    own = {
        str(path.relative_to(SRC)): lines
        for path in SRC.rglob("*.py")
        if (lines := _fixed_sleeps_after_failures(ast.parse(path.read_text())))
    }
    assert own == {}
