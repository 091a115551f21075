"""NATS subject arithmetic (pure; runs without a broker)."""

from __future__ import annotations

import pytest

pytest.importorskip("nats")

from dispytch.nats.subjects import (
    consumer_name,
    covers,
    merge_subjects,
    overlaps,
    widen,
)


@pytest.mark.parametrize(
    ("wide", "narrow", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.*", "a.b", True),
        ("a.*", "a.*", True),
        ("a.b", "a.*", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a.*", True),
        ("a.>", "a", False),
        ("a.*", "a.>", False),
        ("a.*", "a.b.c", False),
        (">", "a", True),
        ("a.b.>", "a.>", False),
    ],
)
def test_covers(wide: str, narrow: str, expected: bool) -> None:
    assert covers(wide, narrow) is expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("a.*", "a.b", True),
        ("a.b.*", "a.*.c", True),
        ("a.b", "a.c", False),
        ("a.*", "a.b.c", False),
        ("a.>", "a.b.c", True),
        ("a.>", "a", False),
        ("x.*", "y.*", False),
    ],
)
def test_overlaps_is_symmetric(a: str, b: str, expected: bool) -> None:
    assert overlaps(a, b) is expected
    assert overlaps(b, a) is expected


def test_widen_covers_both() -> None:
    assert widen("a.b.*", "a.*.c") == "a.*.*"
    assert widen("a.b", "a.b.c") == "a.b.>"
    assert widen("a.>", "a.b") == "a.>"


def test_merge_keeps_subjects_disjoint_and_covering() -> None:
    merged = merge_subjects(["orders", "user.1.events"], ["user.*.events", "orders"])
    assert merged == ["orders", "user.*.events"]
    merged = merge_subjects(["a.b.*"], ["a.*.c"])
    assert merged == ["a.*.*"]
    merged = merge_subjects(["a.b", "a.c", "z"], ["a.*"])
    assert merged == ["z", "a.*"]
    wanted = ["p.q", "p.*", "p.q.r", "p.>", "s"]
    merged = merge_subjects([], wanted)
    assert all(any(covers(m, w) for m in merged) for w in wanted)
    assert not any(overlaps(x, y) for i, x in enumerate(merged) for y in merged[i + 1 :])


def test_consumer_names_are_valid_and_distinct() -> None:
    one = consumer_name("billing.eu", "user.*.events")
    two = consumer_name("billing_eu", "user.*.events")
    three = consumer_name("billing.eu", "user.>.events")
    assert len({one, two, three}) == 3
    for name in (one, two, three):
        assert not set(name) & set(".*> \t")
    assert len(consumer_name("g" * 500, "t" * 500)) < 256
