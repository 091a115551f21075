"""Kafka commit positions and subscriptions: pure logic, no broker."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("aiokafka")

from dispytch.kafka.offsets import OffsetTracker, PartitionOffsets
from dispytch.kafka.subscription import subscription_for
from dispytch.routing import TopicPattern


def _part(*offsets: int) -> PartitionOffsets:
    part = PartitionOffsets()
    for offset in offsets:
        part.track(offset)
    return part


def test_in_order_settles_move_the_commit_position() -> None:
    part = _part(0, 1, 2)
    assert part.due is None
    assert part.settle(0)
    assert part.due == 1
    assert part.settle(1)
    assert part.settle(2)
    assert part.due == 3


def test_commit_never_passes_an_unsettled_record() -> None:
    part = _part(10, 11, 12, 13)
    assert not part.settle(12)
    assert not part.settle(13)
    assert part.due is None  # 10 and 11 are still being handled
    assert part.settle(10)
    assert part.due == 11  # 11 still blocks 12 and 13
    assert part.settle(11)
    assert part.due == 14


def test_gaps_in_offsets_are_fine() -> None:
    # Compaction and transaction markers leave holes; positions follow real offsets.
    part = _part(3, 7, 20)
    part.settle(7)
    part.settle(3)
    assert part.due == 8
    part.settle(20)
    assert part.due == 21


def test_due_only_after_a_change() -> None:
    part = _part(0, 1)
    part.settle(0)
    part.committed(1)
    assert part.due is None
    part.settle(1)
    assert part.due == 2


def test_unknown_or_repeated_settles_are_ignored() -> None:
    part = _part(0)
    assert part.settle(0)
    assert not part.settle(0)
    assert not part.settle(99)
    assert part.due == 1


def test_abandoned_record_blocks_commits_but_is_not_in_flight() -> None:
    part = _part(0, 1, 2)
    part.abandon(1)
    assert part.in_flight == 2
    part.settle(0)
    part.settle(2)
    assert part.due == 1
    assert part.in_flight == 0
    assert part.lowest_unsettled == 1


def test_rewind_returns_oldest_unsettled_and_keeps_position() -> None:
    part = _part(0, 1, 2, 3)
    part.settle(0)
    part.settle(2)
    assert part.rewind() == 1
    assert part.due == 1
    assert part.in_flight == 0
    assert not part.settle(3)  # handed out before the rewind: ignored
    part.track(1)  # fetched again
    assert part.settle(1)
    assert part.due == 2
    assert _part().rewind() is None


def test_tracker_keeps_partitions_apart() -> None:
    tracker: OffsetTracker[tuple[str, int]] = OffsetTracker()
    a, b = ("t", 0), ("t", 1)
    for offset in range(3):
        tracker.track(a, offset)
        tracker.track(b, offset)
    tracker.settle(b, 0)
    tracker.settle(b, 1)
    tracker.settle(a, 1)
    assert tracker.due() == {b: 2}
    assert tracker.in_flight() == 3
    assert tracker.in_flight([a]) == 2
    tracker.committed({b: 2})
    assert tracker.due() == {}
    tracker.settle(a, 0)
    assert tracker.due([a, b]) == {a: 2}
    assert tracker.lowest_unsettled(a) == 2
    tracker.forget([a])
    assert tracker.due() == {}
    assert not tracker.settle(a, 2)
    assert tracker.rewind(a) is None


def test_literal_topics_subscribe_as_a_list() -> None:
    sub = subscription_for([TopicPattern.parse("orders", "."), TopicPattern.parse("users", ".")])
    assert sub.topics == ("orders", "users")
    assert sub.pattern is None


def test_patterns_and_literals_fold_into_one_regex() -> None:
    sub = subscription_for(
        [
            TopicPattern.parse("orders.v1", "."),
            TopicPattern.parse("user.{user_id}.events", "."),
            TopicPattern.parse("team.{user_id}", "."),  # same group name: must still compile
        ]
    )
    assert sub.pattern is not None
    regex = re.compile(sub.pattern)
    assert regex.match("orders.v1")
    assert not regex.match("ordersXv1")
    assert not regex.match("orders.v1.dlq")
    assert regex.match("user.42.events")
    assert not regex.match("user.42.events.dlq")
    assert not regex.match("user.4.2.events")
    assert regex.match("team.7")
    assert sub.topics == ("orders.v1",)


def test_a_rewind_with_nothing_settled_still_gives_a_commit_position() -> None:
    part = _part(5, 6, 7)
    assert part.position == 5
    assert part.rewind() == 5
    assert part.position == 5  # what a clean stop commits: nothing before 5 is pending
    assert part.due == 5
