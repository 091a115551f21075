"""The poison corpus: what a publisher with the broker's own client can send a Dispytch service,
and what the service must make of it. Pure data: no I/O.

Each :class:`Case` builds one hostile publish (:class:`Bad`) for a backend, and says what must
come of it (:class:`Expect`): a dead letter with the raw bytes (and its reason), handled as an
ordinary event (the broker's own rules make it valid), acknowledged without a handler (an
unknown event type), or skipped and counted (not even a dead letter is possible). Every case is
followed by a good event on the case's own topic, which must be handled.

Topics: the service listens on ``<prefix><d>{case}`` (and ``<prefix><d>two<d>{a}<d>end``), so
each case has a topic of its own, ``<prefix><d><case name>``, its *home*; a case about topic
names publishes elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from tests.poison.service import EVENT_TYPE, MAX_PAYLOAD_BYTES

__all__ = ["BACKENDS", "CASES", "Bad", "Case", "Expect", "Target", "envelope"]

#: Every backend the corpus runs on; ``rabbitmq_classic`` is RabbitMQ with a classic queue
#: (where the delivery count is not the broker's).
BACKENDS = (
    "kafka",
    "rabbitmq",
    "rabbitmq_classic",
    "redis",
    "redis_streams",
    "nats",
    "nats_core",
    "memory",
)
RABBITMQ = ("rabbitmq", "rabbitmq_classic")
NATS = ("nats", "nats_core")

#: Text a log-injection case hides behind a newline: no log line may start with it.
FORGED_ID = "CORPUS-FORGED-ID ERROR dispytch.listener: all handlers disabled"
FORGED_TOPIC = "CORPUS-FORGED-TOPIC"

Outcome = Literal["dead_letter", "handled", "ignored", "skipped"]


@dataclass(frozen=True)
class Expect:
    """What must come of a bad message.

    ``dead_letter``: exactly one dead letter of the topic holds its raw payload, with
    ``reason`` (and ``undecodable`` among the parts its ``x-dispytch-undecodable`` header
    names, when given); ``handled``: the handler ran for it once; ``ignored``: acknowledged,
    neither handled nor dead-lettered; ``skipped``: neither, counted in the consumer's
    ``skipped`` and logged.
    """

    outcome: Outcome
    reason: str = ""
    undecodable: str = ""


@dataclass(frozen=True)
class Target:
    """Where a backend's corpus run publishes."""

    backend: str
    prefix: str
    delimiter: str

    def home(self, case: Case) -> str:
        return f"{self.prefix}{self.delimiter}{case.name}"


@dataclass(frozen=True)
class Bad:
    """One hostile publish. ``topic`` ``None`` is the case's home topic.

    Backend-specific parts: ``fields`` (a Redis stream entry's fields, instead of Dispytch's
    layout), ``header_block`` (a raw NATS header block), ``properties`` (AMQP ``message_id``,
    ``timestamp``), ``codec`` (the compression codec of a Kafka batch).
    """

    payload: bytes
    topic: bytes | None = None
    headers: tuple[tuple[bytes, bytes | int], ...] = ()
    key: bytes | None = None
    fields: Mapping[bytes, bytes] | None = None
    header_block: bytes | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    codec: str | None = None


#: What a broker cannot carry at all, per feature a case needs: backend -> why.
CANNOT: dict[str, dict[str, str]] = {
    "headers": {"redis": "Redis Pub/Sub messages carry no headers"},
    "key": {
        "redis": "Redis Pub/Sub messages carry no key",
    },
    "binary-topic": {
        "kafka": "Kafka refuses topic names outside [A-Za-z0-9._-] (ASCII)",
    },
    "wildcard-in-topic": {
        "kafka": "Kafka refuses topic names outside [A-Za-z0-9._-]: no wildcard character",
    },
    "control-in-topic": {
        "kafka": "Kafka refuses topic names outside [A-Za-z0-9._-]: no control character",
    },
    "empty-segment": {
        "nats": "the NATS server matches no empty subject token ('a..b') to a wildcard",
        "nats_core": "the NATS server matches no empty subject token ('a..b') to a wildcard",
    },
}

#: Topics as long as each broker takes (a raw publisher is not held to Dispytch's emit rules).
LONG_TOPIC = {"kafka": 249, "rabbitmq": 255, "rabbitmq_classic": 255}
LONG_TOPIC_DEFAULT = 4050  # NATS: under its 4,096-byte control line, over a dead letter's room


def envelope(
    seq: int | str,
    *,
    id: str | None = None,
    type: str = EVENT_TYPE,
    **body: Any,
) -> bytes:
    """A Dispytch envelope of the corpus service's event, as raw JSON bytes."""
    return json.dumps(
        {
            "id": f"corpus-{seq}" if id is None else id,
            "type": type,
            "body": {"seq": seq, **body},
            "timestamp": 1,
        }
    ).encode()


@dataclass(frozen=True)
class Case:
    """One hostile input: ``make(target, seq, home)`` builds it (``seq``: the sequence number
    its body carries, where it has one; ``home``: the case's home topic), ``expect`` says
    what must come of it (``expect_on`` per backend where the broker's rules differ);
    ``needs`` lists features of :data:`CANNOT`, ``only`` the backends a broker-specific case
    runs on."""

    name: str
    what: str
    make: Callable[[Target, int, bytes], Bad]
    expect: Expect
    needs: tuple[str, ...] = ()
    only: tuple[str, ...] = ()
    expect_on: Mapping[str, Expect] = field(default_factory=dict)
    #: a log-injection case: this text follows a newline or control character in the input
    forged: str = ""
    #: bytes the dead letter must keep in its ``x-dispytch-undecodable*`` headers (base64 or
    #: as text); a topic that is not UTF-8 must be kept whole in ``…-original-topic-b64``
    kept: bytes = b""

    def expected(self, backend: str) -> Expect:
        return self.expect_on.get(backend, self.expect)

    def build(self, target: Target, seq: int) -> Bad:
        return self.make(target, seq, target.home(self).encode())

    def skip_reason(self, backend: str) -> str | None:
        if self.only and backend not in self.only:
            return f"{self.name} is about {', '.join(self.only)} only"
        for need in self.needs:
            why = CANNOT.get(need, {}).get(backend)
            if why is not None:
                return why
        return None


Maker = Callable[[Target, int, bytes], Bad]
DECODE = Expect("dead_letter", "decode")
VALIDATION = Expect("dead_letter", "validation")
HANDLED = Expect("handled")


def _cases() -> list[Case]:
    cases: list[Case] = []

    def case(name: str, what: str, expect: Expect, **more: Any) -> Callable[..., Any]:
        def register(make: Callable[[Target, int, bytes], Bad]) -> Callable[[Target, int], Bad]:
            cases.append(Case(name, what, make, expect, **more))
            return make

        return register

    # -- the body ---------------------------------------------------------------------------

    @case("not-json", "a body that is not JSON (nor UTF-8)", DECODE)
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(b"\xff\xfe not JSON at all " + t.backend.encode())

    @case("truncated", "a JSON envelope cut in half", DECODE)
    def _(t: Target, seq: int, home: bytes) -> Bad:
        whole = envelope(seq, note="x" * 40)
        return Bad(whole[: len(whole) // 2])

    @case("empty-payload", "an empty body", DECODE)
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(b"")

    @case("deep-nesting", "an envelope nested 20,000 levels deep", DECODE)
    def _(t: Target, seq: int, home: bytes) -> Bad:
        deep = b"[" * 20_000 + b"]" * 20_000
        return Bad(envelope(seq).replace(b'"timestamp"', b'"deep": ' + deep + b', "timestamp"'))

    @case("huge", f"a valid envelope of just over max_payload_bytes ({MAX_PAYLOAD_BYTES})", DECODE)
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq, pad="x" * MAX_PAYLOAD_BYTES))

    @case("expansion-bomb", "[{},{},...]: 120 KB that would decode to ~3 MB of dicts", DECODE)
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(b'[{"bomb":' + str(seq).encode() + b"}" + b",{}" * 40_000 + b"]")

    @case("envelope-not-object", "a JSON array where the envelope object belongs", DECODE)
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(json.dumps([f"corpus-{seq}", EVENT_TYPE, {"seq": seq}]).encode())

    @case("envelope-wrong-types", "an envelope whose id, type and body have wrong types", DECODE)
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(json.dumps({"id": seq, "type": [EVENT_TYPE], "body": "seq"}).encode())

    @case("envelope-missing-body", "an envelope without a body", DECODE)
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(json.dumps({"id": f"corpus-{seq}", "type": EVENT_TYPE}).encode())

    @case("unknown-type", "an event type no handler takes", Expect("ignored"))
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq, type="corpus-unknown"))

    @case("invalid-body", "a body that does not fit the handler's model", VALIDATION)
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope("not a number"))

    @case("handler-fails", "an event whose handler raises", Expect("dead_letter", "handler"))
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq, fail=True))

    @case(
        "forged-failure-headers",
        "a failing event carrying forged x-dispytch-* failure headers",
        Expect("dead_letter", "handler"),
        needs=("headers",),
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        forged = (
            (b"x-dispytch-reason", b"redelivery"),
            (b"x-dispytch-handler", b"forged.handler"),
            (b"x-dispytch-attempts", b"99"),
            (b"x-dispytch-error-type", b"Forged"),
            (b"x-dispytch-original-topic", b"somewhere.else"),
        )
        return Bad(envelope(seq, fail=True), headers=forged)

    @case(
        "log-injection-event-id",
        "an event id with a newline, NUL and escape codes before a forged log line",
        VALIDATION,
        forged=FORGED_ID,
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope("not a number", id=f"evil\x00\x1b[2J\n{FORGED_ID}"))

    # -- the topic --------------------------------------------------------------------------

    @case(
        "topic-not-utf8",
        "a valid event on a topic whose name is not UTF-8",
        Expect("dead_letter", "decode", "topic"),
        needs=("binary-topic",),
        # A memory topic is text: the bytes arrive as lone surrogates, a control rule breach.
        expect_on={"memory": VALIDATION},
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), topic=home + b"\xff\xfe")

    @case("topic-long", "a body that is not JSON on the longest topic the broker takes", DECODE)
    def _(t: Target, seq: int, home: bytes) -> Bad:
        length = LONG_TOPIC.get(t.backend, LONG_TOPIC_DEFAULT)
        return Bad(b"not JSON, long topic", topic=home + b"x" * (length - len(home)))

    @case(
        "segment-empty",
        "a valid event on a topic with an empty segment ('a..b') a pattern handler matches",
        VALIDATION,
        needs=("empty-segment",),
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        d = t.delimiter.encode()
        return Bad(envelope(seq), topic=t.prefix.encode() + d + b"two" + d + d + b"end")

    @case(
        "segment-wildcard",
        "a valid event on a topic whose segment holds a wildcard character",
        VALIDATION,
        needs=("wildcard-in-topic",),
        expect_on={"memory": HANDLED},  # no character is a wildcard on the memory broker
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), topic=home + b"*#>")

    @case(
        "segment-control",
        "a valid event on a topic with NUL, an escape code and a newline before a forged line",
        VALIDATION,
        needs=("control-in-topic",),
        forged=FORGED_TOPIC,
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        newline = b"" if t.backend in NATS else b"\n"  # whitespace ends a NATS subject
        evil = b"\x00\x1b[2J" + newline + FORGED_TOPIC.encode()
        return Bad(envelope(seq), topic=home + evil)

    # -- headers and keys -------------------------------------------------------------------

    @case(
        "header-name-not-utf8",
        "a valid event with a header whose name is not UTF-8",
        Expect("dead_letter", "decode", "headers"),
        needs=("headers",),
        kept=b"\xffname\xfe",
        # Memory normalises header names to text at publish (escaped): an ordinary event.
        expect_on={"memory": HANDLED},
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), headers=((b"trace", b"t-1"), (b"\xffname\xfe", b"\x00raw")))

    @case(
        "header-value-not-utf8",
        "a valid event with a header whose value is not UTF-8",
        Expect("dead_letter", "decode", "headers"),
        needs=("headers",),
        kept=b"\xff\xfe\x00",
        # Legal where header values are bytes (Kafka, AMQP long strings, NATS): handlers see
        # replacement characters; memory normalises it at publish. A Redis stream header is
        # text by Dispytch's own entry layout.
        expect_on={b: HANDLED for b in ("kafka", "memory", *NATS, *RABBITMQ)},
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), headers=((b"trace", b"\xff\xfe\x00"),))

    @case(
        "key-not-utf8",
        "a valid event whose key is not UTF-8 (keys are bytes)",
        HANDLED,
        needs=("key",),
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), key=b"\xff\xfe\x00")

    @case(
        "delivery-count-forged",
        "a valid event with a forged x-delivery-count of 1000 (max_deliveries is 3)",
        HANDLED,
        only=RABBITMQ,
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), headers=((b"x-delivery-count", 1000),))

    @case(
        "amqp-message-id-not-utf8",
        "a valid event whose AMQP message-id property is not UTF-8",
        Expect("dead_letter", "decode", "properties"),
        only=RABBITMQ,
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), properties={"message_id": b"id-\xff"})

    @case(
        "amqp-timestamp-out-of-range",
        "a valid event whose AMQP timestamp is no date",
        Expect("dead_letter", "decode", "properties"),
        only=RABBITMQ,
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), properties={"timestamp": 0xFFFFFFFFFFFFFFF0})

    @case(
        "key-b64-not-base64",
        "a valid event whose x-dispytch-key-b64 header is not base64",
        Expect("dead_letter", "decode", "key"),
        only=NATS,
        kept=b"!!!not base64",
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), headers=((b"x-dispytch-key-b64", b"!!!not base64"),))

    @case(
        "header-block-unparseable",
        "a valid event whose header block nats-py cannot parse",
        Expect("dead_letter", "decode", "headers"),
        only=NATS,
        kept=b"NATS/1.0 100 \xff\xfe",
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), header_block=b"NATS/1.0 100 \xff\xfe\r\n\r\n")

    @case(
        "status-line-forged",
        "a valid event with a status line only the server may send (503)",
        Expect("dead_letter", "decode", "headers"),
        only=NATS,
        kept=b"NATS/1.0 503",
        # Core NATS stores nothing: there a status line is only a header named Status.
        expect_on={"nats_core": HANDLED},
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), header_block=b"NATS/1.0 503\r\n\r\n")

    @case(
        "entry-without-payload",
        "a stream entry without a payload field",
        Expect("dead_letter", "decode", "payload"),
        only=("redis_streams",),
        kept=b"\xff\xfe",
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(b"", fields={b"other": b"\xff\xfe", b"seq": str(seq).encode()})

    @case(
        "batch-unreadable",
        "a record batch in a codec the consumer cannot read (snappy, no snappy library)",
        Expect("skipped"),
        only=("kafka",),
    )
    def _(t: Target, seq: int, home: bytes) -> Bad:
        return Bad(envelope(seq), codec="snappy")

    return cases


CASES = _cases()
