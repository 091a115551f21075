"""Cost of the topic-value checks on emit and on consume, per event.

    python bench/topic_rules.py [--events 200000] [--repeats 5]

Emit: ``EventEmitter.encode`` of an event whose topic has two placeholders
(``tenant.{tenant_id}.user.{user_id}.events``), with the broker's rules (what every emit does)
and without them (``TopicTemplate.render`` unchecked, what emits did before). Consume:
``check_segments`` on the two captured segments, which the listener runs once per handler of a
pattern topic. Printed: ns/event (fastest of the repeats).
"""

from __future__ import annotations

import argparse
import time

from dispytch import EventBase, EventEmitter
from dispytch.memory import MemoryBroker, MemoryProducer
from dispytch.topic_rules import KAFKA, NATS, RABBITMQ, REDIS, TopicRules, check_segments


class UserEvent(EventBase):
    __topic__ = "tenant.{tenant_id}.user.{user_id}.events"
    __event_type__ = "user_event"
    tenant_id: str
    user_id: int
    note: str


def _per_event(func: object, events: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        func()  # type: ignore[operator]
        samples.append((time.perf_counter_ns() - started) / events)
    # The fastest run: on a shared machine the others measure the neighbours (as timeit does).
    return min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.events
    batch = [UserEvent(tenant_id=f"acme-{i % 97}", user_id=i, note="x") for i in range(1000)]
    template = UserEvent.__topic_template__
    assert template is not None
    emitter = EventEmitter(MemoryProducer(MemoryBroker()))

    def render_unchecked() -> None:
        for i in range(n):
            template.render(batch[i % 1000])

    def render_before() -> None:  # what TopicTemplate.render did before the checks
        fields = template.fields
        for i in range(n):
            event = batch[i % 1000]
            template.template.format_map({name: getattr(event, name) for name in fields})

    print(f"{n} events, fastest of {args.repeats} runs, ns/event")
    print(f"  render, before the checks existed  {_per_event(render_before, n, args.repeats):8.0f}")
    base = _per_event(render_unchecked, n, args.repeats)
    print(f"  render, unchecked                  {base:8.0f}")
    for rules in (KAFKA, RABBITMQ, REDIS, NATS):

        def render_checked(rules: TopicRules = rules) -> None:
            for i in range(n):
                template.render(batch[i % 1000], rules)

        cost = _per_event(render_checked, n, args.repeats)
        print(f"  render, {rules.broker:<10} rules          {cost:8.0f}  (+{cost - base:.0f})")

    def encode() -> None:
        for i in range(n):
            emitter.encode(batch[i % 1000], 0)

    print(f"  EventEmitter.encode (whole envelope) {_per_event(encode, n, args.repeats):6.0f}")
    segments = {"tenant_id": "acme-42", "user_id": "12345"}

    def consume_check() -> None:
        for _ in range(n):
            check_segments(segments, NATS)

    print(
        f"  check_segments (consume, 2 segments) {_per_event(consume_check, n, args.repeats):6.0f}"
    )


if __name__ == "__main__":
    main()
