"""Batched RabbitMQ acks: which tag one ``basic.ack(multiple=True)`` may carry. Pure, no broker."""

from __future__ import annotations

import pytest

pytest.importorskip("aio_pika")

from dispytch.rabbitmq.acks import ChannelAcks


def test_in_order_acks_fold_into_one_multiple_ack() -> None:
    acks = ChannelAcks()
    for tag in (1, 2, 3):
        acks.settle(tag)
    assert (acks.due, acks.unsent, acks.pending) == (3, 3, 3)
    assert acks.take_due() == 3
    assert (acks.due, acks.unsent, acks.pending) == (None, 0, 0)
    acks.settle(4)
    assert acks.take_due() == 4


def test_multiple_ack_never_covers_a_delivery_still_in_flight() -> None:
    acks = ChannelAcks()
    acks.settle(1)
    acks.settle(3)
    acks.settle(4)
    assert acks.due == 1  # 2 is still being handled
    assert acks.pending == 3
    assert acks.take_due() == 1
    assert acks.take_due() is None
    acks.settle(2)
    assert acks.take_due() == 4


def test_nothing_is_due_before_the_first_tag_settles() -> None:
    acks = ChannelAcks()
    for tag in (2, 3, 4):
        acks.settle(tag)
    assert acks.due is None
    assert acks.pending == 3


def test_a_sent_nack_counts_as_settled_but_is_never_the_ack_tag() -> None:
    acks = ChannelAcks()
    acks.settle(2)
    acks.settle(1, sent=True)  # handed back: basic.nack already on the wire
    assert acks.due == 2
    assert acks.unsent == 1
    acks = ChannelAcks()
    acks.settle(1)
    acks.settle(2, sent=True)
    assert acks.take_due() == 1  # the ack tag must be one the broker still holds
    acks.settle(3, sent=True)
    assert acks.due is None  # only hand-backs since: nothing to ack


def test_settling_twice_is_ignored() -> None:
    acks = ChannelAcks()
    acks.settle(1)
    assert acks.take_due() == 1
    acks.settle(1)
    acks.settle(3)
    acks.settle(3)
    assert (acks.due, acks.pending) == (None, 1)


def test_stragglers_only_once_the_prefix_is_stuck() -> None:
    acks = ChannelAcks()
    acks.settle(3)
    acks.settle(4)
    assert acks.take_stragglers() == []  # first look: the prefix may still move
    acks.settle(1)
    acks.settle(5)
    assert acks.take_due() == 1
    assert acks.take_stragglers() == []  # the prefix moved (0 -> 1) since the last look
    assert acks.take_stragglers() == [3, 4, 5]  # stuck behind 2: ack those one by one
    assert acks.pending == 0
    acks.settle(6)
    acks.settle(2)  # the prefix passes the stragglers, whose acks were sent
    assert acks.take_due() == 6


def test_a_moving_prefix_holds_the_stragglers_back() -> None:
    acks = ChannelAcks()
    acks.settle(1)
    acks.settle(3)
    assert acks.take_stragglers() == []
    acks.settle(2)
    acks.settle(5)
    assert acks.take_stragglers() == []
    assert acks.take_due() == 3


def test_force_takes_every_straggler() -> None:
    acks = ChannelAcks()
    acks.settle(2)
    acks.settle(7)
    assert acks.take_stragglers(force=True) == [2, 7]
    assert acks.take_stragglers(force=True) == []
    acks.settle(1)
    assert acks.take_due() == 1  # 2 was sent on its own: the prefix passes it


def test_a_delivery_of_another_consumer_on_the_channel_stops_the_prefix() -> None:
    # Tags 1 and 2 went to someone else's consumer on the same channel: never ack them.
    acks = ChannelAcks()
    for tag in (3, 4, 5):
        acks.settle(tag)
    assert acks.take_due() is None
    assert acks.take_stragglers() == []
    assert acks.take_stragglers() == [3, 4, 5]
