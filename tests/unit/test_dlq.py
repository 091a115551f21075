"""Dead-letter operations without a broker: selections, replay messages, the memory store,
replays that fail part-way, the CLI's output and parsing."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from dispytch import App, Event, EventBase
from dispytch.dead_letter import DeadLetter
from dispytch.dlq import (
    REPLAY_COUNT_HEADER,
    REPLAYED_AT_HEADER,
    Selection,
    event_id,
    open_store,
    parse_time,
    replay_message,
)
from dispytch.dlq.cli import ProgressOutput, _rate, add_dlq_commands, run_dlq
from dispytch.dlq.store import ReplayReport
from dispytch.emitter.producer import Outgoing, Producer
from dispytch.errors import ConfigurationError
from dispytch.memory import MemoryBackend, MemoryBroker


class Order(EventBase):
    __topic__ = "orders"
    __event_type__ = "created"
    n: int


class Refund(EventBase):
    __topic__ = "refunds"
    __event_type__ = "made"
    n: int


def letter(**headers: str) -> DeadLetter:
    payload = json.dumps({"id": "e-1", "type": "t", "body": {}, "timestamp": 1}).encode()
    return DeadLetter("orders", payload, headers)


# -- selections -------------------------------------------------------------------------------


def test_selection_criteria_each_narrow() -> None:
    item = letter(
        **{
            "x-dispytch-reason": "handler",
            "x-dispytch-handler": "charge",
            "x-dispytch-error-type": "ValueError",
            "x-dispytch-failed-at": "5000",
        }
    )
    assert Selection().matches(item)
    assert Selection.build(topics=["orders"], reasons=["handler"]).matches(item)
    assert not Selection.build(topics=["refunds"]).matches(item)
    assert not Selection.build(reasons=["decode"]).matches(item)
    assert Selection.build(handlers=["charge"], error_types=["ValueError"]).matches(item)
    assert not Selection.build(handlers=["other"]).matches(item)
    assert not Selection.build(error_types=["KeyError"]).matches(item)
    assert Selection.build(since=5000, until=5001).matches(item)
    assert not Selection.build(since=5001).matches(item)
    assert not Selection.build(until=5000).matches(item)  # until is excluded
    assert Selection.build(event_ids=["e-1"]).matches(item)
    assert not Selection.build(event_ids=["e-2"]).matches(item)
    # Without a failure time, a time range takes nothing.
    assert not Selection.build(since=0).matches(letter())


def test_parse_time_forms() -> None:
    assert parse_time(1234) == 1234
    assert parse_time("1234") == 1234
    assert parse_time("2h", now_ms=10_000_000) == 10_000_000 - 7_200_000
    assert parse_time("30m", now_ms=2_000_000) == 200_000
    assert parse_time("1.5s", now_ms=2_000) == 500
    stamp = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert parse_time("2024-05-01T12:00:00Z") == int(stamp.timestamp() * 1000)
    assert parse_time(datetime(2024, 5, 1, 12)) == int(stamp.timestamp() * 1000)  # naive: UTC
    with pytest.raises(ConfigurationError, match="ISO 8601"):
        parse_time("yesterday")


def test_event_id_reads_json_and_msgpack() -> None:
    msgpack = pytest.importorskip("msgpack")
    assert event_id(b'{"id": "a", "type": "t", "body": {}}') == "a"
    assert event_id(msgpack.packb({"id": "b", "type": "t", "body": {}})) == "b"
    assert event_id(b"\xff\x00 not an envelope") is None
    assert event_id(b'{"id": 5}') is None


# -- replay messages --------------------------------------------------------------------------


def test_replay_message_keeps_payload_key_and_user_headers() -> None:
    item = DeadLetter(
        "orders",
        b"payload",
        {
            "traceparent": "00-abc",
            "x-dispytch-reason": "handler",
            "x-dispytch-forwarded-replay-count": "2",
            "X-Dispytch-Handler": "h",
        },
        b"key-1",
    )
    out = replay_message(item, None, 777)
    assert isinstance(out, Outgoing)
    assert (out.topic, out.payload, out.key) == ("orders", b"payload", b"key-1")
    assert out.headers == {
        "traceparent": "00-abc",
        REPLAYED_AT_HEADER: "777",
        REPLAY_COUNT_HEADER: "3",
    }
    to = replay_message(item, "orders.v2", 1)
    assert isinstance(to, Outgoing) and to.topic == "orders.v2"


def test_replay_message_forged_count_is_bounded() -> None:
    out = replay_message(letter(**{"x-dispytch-replay-count": "9" * 50}), None, 1)
    assert isinstance(out, Outgoing) and out.headers is not None
    assert out.headers[REPLAY_COUNT_HEADER] == "1"


def test_replay_message_refuses_what_cannot_go_back() -> None:
    unreadable = letter(**{"x-dispytch-undecodable": "topic,headers"})
    assert "--to" in str(replay_message(unreadable, None, 1))
    assert isinstance(replay_message(unreadable, "elsewhere", 1), Outgoing)
    truncated = letter(**{"x-dispytch-payload-truncated": "9000"})
    assert "truncated" in str(replay_message(truncated, "elsewhere", 1))


# -- the memory store -------------------------------------------------------------------------


async def dead_lettered_app(broker: MemoryBroker, fail: set[int]) -> tuple[App, list[int]]:
    """An app whose handlers fail for the events numbered in ``fail``; with some dead letters
    of two topics and two handlers already made."""
    app = App(backend=MemoryBackend("memory://", broker=broker), group="g")
    handled: list[int] = []

    @app.handler(topic="orders", event="created")
    async def charge(event: Event[Order]) -> None:
        if event.body.n in fail:
            raise ValueError(f"charge {event.body.n}")
        handled.append(event.body.n)

    @app.handler(topic="refunds", event="made")
    async def refund(event: Event[Refund]) -> None:
        if event.body.n in fail:
            raise KeyError(f"refund {event.body.n}")
        handled.append(event.body.n)

    return app, handled


async def test_memory_store_lists_reads_replays_and_purges() -> None:
    broker = MemoryBroker()
    fail = {0, 1, 2, 10, 11}
    app, handled = await dead_lettered_app(broker, fail)
    async with app:
        await app.emit_many([Order(n=n) for n in (0, 1, 2, 3)])
        await app.emit_many([Refund(n=n) for n in (10, 11)])
        broker.publish("orders", b"\xff not json")
        await broker.wait_idle()
        async with open_store(app) as store:
            summaries = {s.topic: s for s in await store.list()}
            assert set(summaries) == {"orders", "refunds"}
            assert summaries["orders"].count == 4
            assert summaries["orders"].reasons == {"handler": 3, "decode": 1}
            assert summaries["orders"].destinations == {"orders.dlq": 4}
            assert summaries["refunds"].reasons == {"handler": 2}
            assert summaries["orders"].oldest is not None
            assert summaries["orders"].oldest <= (summaries["orders"].newest or 0)

            decode = await store.read(Selection.build(reasons=["decode"]))
            assert [d.payload for d in decode] == [b"\xff not json"]
            by_type = await store.read(Selection.build(error_types=["KeyError"]))
            assert sorted(d.topic for d in by_type) == ["refunds", "refunds"]

            fail.clear()  # the handlers are fixed
            report = await store.replay(Selection.build(topics=["orders"], reasons=["handler"]))
            assert (report.selected, report.replayed, report.failed) == (3, 3, 0)
            await broker.wait_idle()
            assert sorted(handled) == [0, 1, 2, 3]
            left = {s.topic: s.count for s in await store.list()}
            assert left == {"orders": 1, "refunds": 2}

            purged = await store.purge(Selection.build(topics=["refunds"]))
            assert purged.removed == 2
            assert {s.topic: s.count for s in await store.list()} == {"orders": 1}


async def test_replayed_event_keeps_its_id_and_gets_replay_headers() -> None:
    broker = MemoryBroker()
    app, _ = await dead_lettered_app(broker, {5})
    seen: list[tuple[str, dict[str, str]]] = []

    @app.handler(topic="orders", event="created")
    async def spy(event: Event[Order]) -> None:
        seen.append((event.id, dict(event.headers)))

    async with app:
        await app.emit(Order(n=5), headers={"tenant": "a"})
        await broker.wait_idle()
        first_id = seen[0][0]
        async with open_store(app) as store:
            await store.replay()
            await broker.wait_idle()
            # It failed again in "charge": replayed a second time, the count goes on.
            await store.replay()
            await broker.wait_idle()
    assert [event_id for event_id, _ in seen] == [first_id] * 3
    assert seen[1][1]["tenant"] == "a"
    assert seen[1][1][REPLAY_COUNT_HEADER] == "1"
    assert seen[2][1][REPLAY_COUNT_HEADER] == "2"
    assert int(seen[2][1][REPLAYED_AT_HEADER]) >= int(seen[1][1][REPLAYED_AT_HEADER])


class FailingAfter(Producer):
    """Confirms the first ``ok`` messages, then refuses every one."""

    def __init__(self, ok: int) -> None:
        self.ok = ok
        self.sent: list[Outgoing] = []

    async def send(self, topic, payload, config=None, *, headers=None, key=None):  # type: ignore[no-untyped-def]
        raise AssertionError("replays use send_many")

    async def send_many(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        out: list[BaseException | None] = []
        for message in messages:
            if self.ok > 0:
                self.ok -= 1
                self.sent.append(message)
                out.append(None)
            else:
                out.append(ConnectionError("broker gone"))
        return out


async def test_replay_removes_only_what_was_confirmed_and_stops() -> None:
    broker = MemoryBroker()
    for n in range(10):
        broker.publish("orders.dlq", f"p{n}".encode(), None, {"x-dispytch-reason": "handler"})
    backend = MemoryBackend("memory://", broker=broker)
    store = backend.dead_letter_store()
    producer = FailingAfter(ok=5)
    store.producer = producer
    report = await store.replay(batch=4)
    # Batch 1 (4) confirmed and removed; batch 2: 1 confirmed and removed, 3 refused: stop.
    assert (report.replayed, report.failed) == (5, 3)
    assert report.error is not None and "broker gone" in report.error
    left = [d.payload for d in await store.read(limit=100)]
    assert left == [f"p{n}".encode() for n in range(5, 10)]
    # Resumed with a working producer: the rest, nothing twice.
    producer.ok = 100
    again = await store.replay(batch=4)
    assert again.replayed == 5
    assert [m.payload for m in producer.sent] == [f"p{n}".encode() for n in range(10)]


async def test_replay_dry_run_and_rate() -> None:
    broker = MemoryBroker()
    for n in range(6):
        broker.publish("orders.dlq", f"p{n}".encode())
    store = MemoryBackend("memory://", broker=broker).dead_letter_store()
    dry = await store.replay(dry_run=True)
    assert (dry.replayed, dry.dry_run) == (6, True)
    assert await store.count() == 6
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await store.replay(rate=20.0)  # batches of 2, one every 0.1 s
    assert report.replayed == 6
    assert loop.time() - started >= 0.2 - 0.01
    assert await store.count() == 0
    with pytest.raises(ConfigurationError):
        await store.replay(rate=0)
    with pytest.raises(ConfigurationError):
        await store.replay(batch=0)


async def test_removed_dead_letters_are_not_consumed() -> None:
    broker = MemoryBroker()
    broker.publish("orders.dlq", b"a")
    broker.publish("orders.dlq", b"b")
    store = MemoryBackend("memory://", broker=broker).dead_letter_store()
    first = (await store.read(limit=1))[0]
    await store.remove([first])
    assert [d.payload for d in broker.dead_letters("orders")] == [b"b"]
    from dispytch.routing import TopicPattern

    broker.subscribe("reader", [TopicPattern("orders.dlq", "", ())])
    record, _ = await broker.fetch("reader")
    assert record.payload == b"b"


# -- CLI --------------------------------------------------------------------------------------


def test_rate_parsing() -> None:
    assert _rate(None) is None
    assert _rate("50") == 50
    assert _rate("50/s") == 50
    assert _rate("600/m") == 10
    for bad in ("fast", "-1", "0/s", "5/d", "inf"):
        with pytest.raises(ConfigurationError):
            _rate(bad)


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_lines_otherwise() -> None:
    plain = io.StringIO()
    progress = ProgressOutput(plain, "replayed", 4)
    report = ReplayReport(total=4)
    report.replayed = 2
    progress.replay(report)
    report.replayed = 4
    progress.replay(report)
    progress.finish()
    lines = plain.getvalue().splitlines()
    assert lines[0].startswith("replayed 2 of 4")
    assert lines[-1].startswith("replayed 4 of 4")
    assert "\r" not in plain.getvalue()

    tty = Tty()
    progress = ProgressOutput(tty, "replayed", 4, width=8)
    report = ReplayReport(total=4)
    report.replayed = 4
    progress.replay(report)
    progress.finish()
    assert tty.getvalue().startswith("\r[########] 4/4 replayed 4")
    assert tty.getvalue().endswith("\n")


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_dlq_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(["dlq", *argv])


def test_cli_refuses_memory_urls_and_needs_a_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPYTCH_BROKER_URL", raising=False)
    err = io.StringIO()
    assert run_dlq(parse("list"), io.StringIO(), err) == 2
    assert "--broker-url" in err.getvalue()
    err = io.StringIO()
    assert run_dlq(parse("list", "--broker-url", "memory://x"), io.StringIO(), err) == 2
    assert "module:app" in err.getvalue()


def test_cli_errors_never_show_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPYTCH_BROKER_URL", raising=False)
    err = io.StringIO()
    url = "redis+streams://:hunter2secret@127.0.0.1:1/0"
    code = run_dlq(parse("list", "--broker-url", url), io.StringIO(), err)
    assert code == 2
    assert "hunter2secret" not in err.getvalue()
    assert err.getvalue().startswith("dispytch dlq: ")


def test_kafka_marks_move_the_offset_over_removed_runs() -> None:
    pytest.importorskip("aiokafka")
    from dispytch.kafka.dlq import Marks

    marks = Marks(10)
    marks.remove([12, 13, 15])
    assert (marks.committed, marks.metadata()) == (10, "dispytch-dlq:1:12-13,15")
    assert marks.is_removed(9) and marks.is_removed(13) and not marks.is_removed(11)
    marks.remove([10, 11])
    assert (marks.committed, marks.metadata()) == (14, "dispytch-dlq:1:15")
    marks.remove([14])
    assert (marks.committed, marks.metadata()) == (16, "")
    again = Marks.parse(10, "dispytch-dlq:1:12-13,15")
    assert (again.committed, again.removed) == (10, {12, 13, 15})
    # Someone else's metadata, damage, and ranges below the offset are ignored.
    assert Marks.parse(5, "their metadata").removed == set()
    assert Marks.parse(5, "dispytch-dlq:1:x,7,2-3,9-99999999999").removed == {7}
    assert Marks.parse(-1, None).committed == 0
