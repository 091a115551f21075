"""The poison corpus on every backend: each hostile input of :mod:`tests.poison.corpus`,
published with the broker's own client, then a good event on the same topic.

One service process per backend (``dispytch run``; memory in this process) takes the whole
corpus, published case after case. Then, per case: the good event was handled; the bad one is
a dead letter holding its raw bytes (or handled, ignored, skipped: as the case says); the
process lived through all of it and stopped cleanly on SIGTERM; and after a restart the next
good events are handled, with nothing coming back (no second dead letter, no second handling,
no second skip). Each case x backend is one test; a combination the broker cannot carry is
skipped with the reason.

Run: ``DISPYTCH_BROKERS=kafka,rabbitmq,redis,redis_streams,nats,nats_core python -m pytest
tests/poison`` (memory always runs). ``DISPYTCH_CORPUS_RESULTS=FILE`` appends each backend's
timings as a JSON line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dispytch.dead_letter import DeadLetter
from tests.faults.harness import Records
from tests.helpers import listed_brokers
from tests.poison.corpus import BACKENDS, CASES, Bad, Case, Expect, Target, envelope
from tests.poison.wires import WIRES, Service, Wire

#: Sequence numbers: the good event after case ``i`` is ``GOOD + i``, the one after the
#: restart ``AFTER + i``; a bad event that carries a valid body has ``BAD + i``.
GOOD, AFTER, BAD = 1000, 2000, 3000

pytestmark = pytest.mark.timeout(400)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "corpus" not in metafunc.fixturenames:
        return
    params = []
    listed = listed_brokers() | {"memory"}
    for backend in BACKENDS:
        wire = WIRES[backend]
        for case in CASES:
            reason = case.skip_reason(backend)
            if reason is None and wire.listed_as not in listed:
                reason = f"{wire.listed_as} not in DISPYTCH_BROKERS"
            marks = [pytest.mark.skip(reason=reason)] if reason else []
            params.append(pytest.param(backend, case, marks=marks, id=f"{backend}-{case.name}"))
    metafunc.parametrize(("corpus", "case"), params, indirect=["corpus"], scope="module")


def expected(case: Case, backend: str) -> Expect:
    if case.name == "batch-unreadable":
        from aiokafka.codec import has_snappy

        if has_snappy():  # this consumer can read the batch after all
            return Expect("handled")
    return case.expected(backend)


@dataclass
class Phase:
    """One life of the service."""

    alive: bool = False  # still running when the phase's waiting was over
    exit_code: int | None = None  # after SIGTERM
    skipped: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


@dataclass
class Run:
    """What one backend's service made of the whole corpus."""

    backend: str
    target: Target
    bads: dict[str, Bad]
    dead_topics: dict[str, str]
    first: Phase = field(default_factory=Phase)
    second: Phase = field(default_factory=Phase)
    handled_first: Counter[int] = field(default_factory=Counter)
    handled: Counter[int] = field(default_factory=Counter)
    dead_first: dict[str, list[DeadLetter]] = field(default_factory=dict)
    dead: dict[str, list[DeadLetter]] = field(default_factory=dict)
    #: per case (and ``*`` for the whole group): messages the broker still holds unsettled
    #: after the last stop (absent where the broker keeps no count)
    left: dict[str, int] = field(default_factory=dict)
    #: per dead-letter topic or case (``*``: the group): what could not be read back
    errors: dict[str, str] = field(default_factory=dict)
    log: str = ""
    tail: str = ""

    def context(self) -> str:
        problems = self.first.problems + self.second.problems
        said = "".join(f"\n  {p}" for p in problems)
        return f"\n[{self.backend}] scenario problems:{said or ' none'}{self.tail}"


def _dead_topic(backend: str, target: Target, case: Case, bad: Bad) -> str:
    """The topic Dispytch names the bad message by (its dead letters are read by it)."""
    if bad.topic is None:
        return target.home(case)
    if backend == "memory":
        return bad.topic.decode("utf-8", "surrogateescape")
    return bad.topic.decode("utf-8", "backslashreplace")


def _carried(backend: str) -> list[tuple[int, Case]]:
    return [(i, c) for i, c in enumerate(CASES) if c.skip_reason(backend) is None]


async def _wait(
    service: Service, phase: Phase, what: str, done: Any, timeout: float, interval: float = 0.1
) -> None:
    """Wait for ``done()`` (sync or async); on a timeout or a dead service note it in
    ``phase.problems`` instead of failing: each case's test then says what it misses."""
    deadline = time.monotonic() + timeout
    while True:
        result = done()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if not service.alive:
            phase.problems.append(f"the service died while waiting for {what}")
            return
        if time.monotonic() > deadline:
            phase.problems.append(f"timed out after {timeout:.0f}s waiting for {what}")
            return
        await asyncio.sleep(interval)


async def _read_dead(
    wire: Wire, topics: set[str], errors: dict[str, str]
) -> dict[str, list[DeadLetter]]:
    """The dead letters of each topic; a topic whose read failed is left out, the error noted
    in ``errors`` (that case's test fails with it, the others go on)."""
    names = sorted(topics)
    if wire.parallel_reads:
        found = await asyncio.gather(*(wire.dead_letters(t) for t in names), return_exceptions=True)
    else:
        found = [await _catching(wire.dead_letters(t)) for t in names]
    out: dict[str, list[DeadLetter]] = {}
    for name, letters in zip(names, found, strict=True):
        if isinstance(letters, BaseException):
            errors[name] = f"reading the dead letters of {name!r} failed: {letters!r}"
        else:
            errors.pop(name, None)
            out[name] = letters
    return out


async def _catching(read: Any) -> Any:
    try:
        return await read
    except Exception as exc:
        return exc


async def _scenario(backend: str, directory: Path) -> Run:
    uid = uuid.uuid4().hex[:10]
    wire = WIRES[backend](backend, uid)
    target = Target(backend, wire.prefix, wire.delimiter)
    carried = _carried(backend)
    bads = {case.name: case.build(target, BAD + i) for i, case in carried}
    run = Run(
        backend,
        target,
        bads,
        {c.name: _dead_topic(backend, target, c, bads[c.name]) for _, c in carried},
    )
    records = Records(directory)
    homes = [target.home(c).encode() for _, c in carried]
    await wire.open()
    service = wire.service(directory)
    try:
        await wire.prepare(homes + [b.topic for b in bads.values() if b.topic is not None])
        started = time.monotonic()
        await service.start()
        for i, case in carried:
            bad = bads[case.name]
            home = target.home(case).encode()
            await wire.publish(bad.topic or home, bad)
            await wire.publish(home, Bad(envelope(GOOD + i)))
        must = {GOOD + i for i, _ in carried}
        must |= {BAD + i for i, c in carried if expected(c, backend).outcome == "handled"}
        await _wait(
            service,
            run.first,
            "the good events",
            lambda: must <= records.handled().keys(),
            timeout=90,
        )
        dead_wanted = {
            run.dead_topics[c.name]
            for _, c in carried
            if expected(c, backend).outcome == "dead_letter"
        }

        async def all_dead() -> bool:
            run.dead_first = await _read_dead(wire, dead_wanted, run.errors)
            return all(run.dead_first.get(t) for t in dead_wanted)

        await _wait(service, run.first, "the dead letters", all_dead, timeout=60, interval=0.5)
        run.first.alive = service.alive
        if service.alive:
            run.first.skipped = await service.skipped()
        run.first.exit_code = await service.stop()
        run.first.seconds = time.monotonic() - started
        run.handled_first = records.handled()

        # A new process: the good events after the restart are handled, nothing comes back.
        started = time.monotonic()
        await service.start()
        for i, case in carried:
            await wire.publish(target.home(case).encode(), Bad(envelope(AFTER + i)))
        after = {AFTER + i for i, _ in carried}
        await _wait(
            service,
            run.second,
            "the good events after the restart",
            lambda: after <= records.handled().keys(),
            timeout=90,
        )
        run.dead = await _read_dead(wire, set(run.dead_topics.values()), run.errors)
        run.second.alive = service.alive
        if service.alive:
            run.second.skipped = await service.skipped()
        run.second.exit_code = await service.stop()
        run.second.seconds = time.monotonic() - started
        run.handled = records.handled()
        for _, case in carried:
            topics = {target.home(case).encode(), bads[case.name].topic or b""} - {b""}
            try:
                counts = [await wire.left(topic) for topic in sorted(topics)]
            except Exception as exc:
                run.errors[case.name] = f"counting what is left unsettled failed: {exc!r}"
                continue
            if all(n is not None for n in counts):
                run.left[case.name] = sum(n for n in counts if n is not None)
        try:
            in_group = await wire.left_in_group()
        except Exception as exc:
            run.errors["*"] = f"counting what is left unsettled failed: {exc!r}"
        else:
            if in_group is not None:
                run.left["*"] = in_group
    except BaseException:
        cleanup = getattr(service, "cleanup", None)
        if cleanup is not None:
            cleanup()
        raise
    finally:
        run.log = service.log()
        run.tail = service.describe()
        with _suppress_cleanup(backend):
            await wire.cleanup()
        await wire.close()
    _report(run)
    return run


class _suppress_cleanup:
    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: Any, trace: Any) -> bool:
        if error is not None:
            print(f"[{self.backend}] clean-up failed: {error!r}")
        return True


def _report(run: Run) -> None:
    row = {
        "backend": run.backend,
        "cases": len(run.bads),
        "first_s": round(run.first.seconds, 1),
        "restart_s": round(run.second.seconds, 1),
        "unsettled_checked": sorted(run.left) if "*" in run.left else len(run.left),
        "problems": run.first.problems + run.second.problems,
    }
    print(json.dumps(row))
    path = os.environ.get("DISPYTCH_CORPUS_RESULTS")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def corpus(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Run:
    backend: str = request.param
    wire = WIRES[backend]
    if wire.port:
        try:
            socket.create_connection(("127.0.0.1", wire.port), timeout=1).close()
        except OSError:
            pytest.fail(
                f"{wire.listed_as} is listed in DISPYTCH_BROKERS but 127.0.0.1:{wire.port} "
                "does not answer; run: bash scripts/brokers.sh up"
            )
    return asyncio.run(_scenario(backend, tmp_path_factory.mktemp(f"corpus-{backend}")))


# -- the checks, per case ------------------------------------------------------------------------


def _recoverable(headers: Mapping[str, str]) -> list[bytes]:
    """What an operator can get back from a dead letter's ``x-dispytch-undecodable*`` and
    ``…-original-topic-b64`` headers: each value as text, and each ``:``-separated part of it
    base64-decoded."""
    out: list[bytes] = []
    for name, value in headers.items():
        if name.startswith("x-dispytch-undecodable") or name.endswith("-b64"):
            out.append(value.encode())
            for part in value.split(":"):
                with contextlib.suppress(ValueError):
                    out.append(base64.b64decode(part, validate=True))
    return out


def test_poison(corpus: Run, case: Case) -> None:
    run, backend = corpus, corpus.backend
    i = CASES.index(case)
    expect = expected(case, backend)
    context = run.context()

    # The service lived through the whole corpus, and stopped cleanly both times.
    assert run.first.alive and run.first.exit_code == 0, f"service died or failed{context}"
    assert run.second.alive and run.second.exit_code == 0, f"restarted service failed{context}"

    for key in (case.name, run.dead_topics[case.name], "*"):
        assert key not in run.errors, f"{run.errors[key]}{context}"

    # Every message was settled: the broker holds nothing back for the group.
    assert not run.left.get(case.name), f"{run.left[case.name]} left unsettled{context}"
    assert not run.left.get("*"), f"{run.left['*']} left unsettled in the group{context}"

    # The good event after the bad one was handled, once; so was the one after the restart.
    assert run.handled_first[GOOD + i] == 1, f"good event: {run.handled[GOOD + i]}x{context}"
    assert run.handled[AFTER + i] == 1, f"event after the restart: {run.handled[AFTER + i]}x"
    assert run.handled[GOOD + i] == 1

    bad = run.bads[case.name]
    topic = run.dead_topics[case.name]
    mine = [d for d in run.dead.get(topic, []) if d.payload == bad.payload]
    first = [d for d in run.dead_first.get(topic, []) if d.payload == bad.payload]
    seen = (
        f"\nobserved: bad event handled {run.handled_first[BAD + i]}x (after the restart "
        f"{run.handled[BAD + i]}x), {len(first)} dead letter(s) of {topic!r} with its bytes "
        f"({len(mine)} after the restart), skipped {run.first.skipped} then "
        f"{run.second.skipped}{context}"
    )
    if expect.outcome == "dead_letter":
        assert len(first) == 1, f"expected one dead letter{seen}"
        [letter] = first
        assert letter.topic == topic
        assert letter.reason == expect.reason, letter.headers
        if expect.undecodable:
            parts = letter.headers.get("x-dispytch-undecodable", "").split(",")
            assert expect.undecodable in parts, letter.headers
            kept = bad.topic if expect.undecodable == "topic" else case.kept
            if kept:  # (AMQP properties that cannot be decoded are dropped, not kept)
                assert any(kept in part for part in _recoverable(letter.headers)), (
                    f"the dead letter lost {kept!r}: {letter.headers}"
                )
        assert len(mine) == 1, f"it came back after the restart{seen}"
        assert run.handled[BAD + i] == 0, f"the bad event reached the handler{seen}"
    elif expect.outcome == "handled":
        assert run.handled_first[BAD + i] == 1 and run.handled[BAD + i] == 1, seen
        assert not mine, seen
    elif expect.outcome == "ignored":
        assert run.handled[BAD + i] == 0 and not mine, seen
    else:
        assert run.first.skipped == 1, f"expected one message counted as skipped{seen}"
        assert "SKIPPED" in run.log, seen
        assert run.second.skipped == 0, f"skipped again after the restart (it came back){seen}"
        assert run.handled[BAD + i] == 0 and not mine, seen

    if case.name == "forged-failure-headers":
        headers = first[0].headers
        assert headers["x-dispytch-attempts"] == "1"
        assert "forged" not in headers.get("x-dispytch-handler", "")
        assert headers["x-dispytch-original-topic"] == topic
        assert headers["x-dispytch-forwarded-reason"] == "redelivery"
    if case.forged:
        # The input was logged (escaped), and no line of the log was forged by it.
        assert f"\\n{case.forged}" in run.log or f"\\x1b[2J{case.forged}" in run.log, (
            "the input was never logged: nothing shows it was escaped"
        )
        forged = [line for line in run.log.splitlines() if line.startswith(case.forged)]
        assert not forged, forged
