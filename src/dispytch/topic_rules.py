"""What a value may hold when it fills a ``{placeholder}`` of a topic. Pure: no I/O.

A topic such as ``tenant.{tenant_id}.events`` is filled from event fields, which often come from
outside (a request, a payload). Unchecked, ``tenant_id="1.admin"`` routes the event to another
tenant's topic, ``"*"`` or ``">"`` is a wildcard on some brokers, an empty value or a newline
makes a topic nobody listens to. So every value is checked before anything is sent, and a bad
one raises :class:`~dispytch.errors.InvalidTopicError` naming the field and the rule:

========== ===============================================================================
rule       a value breaks it when it...
========== ===============================================================================
empty      is ``""``
delimiter  holds the topic delimiter (``.`` or ``:``): it would add a segment
wildcard   holds a character the broker reads as a wildcard or pattern (``*``, ``>``, ``#``...)
whitespace holds a space, tab, newline or another Unicode space
control    holds a control or invisible formatting character (NUL, ESC, U+202E...)
character  holds a character the broker does not allow in names at all (Kafka: only
           ``A-Za-z0-9._-``)
reserved   makes the topic start or end like the broker's own names (``$JS.``, ``_INBOX.``,
           ``__consumer_offsets``, ``amq.``, a ``.dlq`` stream)
length     makes the topic longer than the broker allows (in characters or UTF-8 bytes)
========== ===============================================================================

Each backend declares its :class:`TopicRules` (``Backend.topic_rules``; seed-style producers
carry them too as ``Producer.topic_rules``). A producer that says nothing gets
:data:`GENERIC`, which forbids both delimiters ``.`` and ``:`` and every wildcard of the
built-in brokers. A consumer applies the same character rules to the segments it captures
from a delivered topic (:func:`check_segments`): a message whose segment breaks them is
dead-lettered as a validation failure instead of reaching a handler.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from dispytch.errors import InvalidTopicError, PayloadValidationError
from dispytch.untrusted import loggable

__all__ = [
    "GENERIC",
    "KAFKA",
    "MEMORY",
    "NATS",
    "RABBITMQ",
    "REDIS",
    "REDIS_STREAMS",
    "TopicRules",
    "check_segments",
]

# Invisible or direction-changing characters a reader of the topic (or of a log) cannot see.
_INVISIBLE = "\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
#: How many distinct clean values a rule set remembers before it starts over.
_KNOWN_VALUES = 4096
#: Longer values are checked every time (the memory of the set stays small).
_KNOWN_LENGTH = 64
# C0 and C1 controls, DEL, lone surrogates (no UTF-8 form), invisible formatting characters.
_CONTROL = "\x00-\x1f\x7f-\x9f\ud800-\udfff" + _INVISIBLE


@dataclass(frozen=True, slots=True)
class TopicRules:
    """The rules of one broker for values that fill topic placeholders.

    Attributes:
        broker: the broker's name, for error messages.
        delimiters: characters that separate topic segments (``"."``; :data:`GENERIC`: ``".:"``).
        wildcards: characters with a pattern meaning on the broker.
        allowed: if set, a regex character class body of the only characters the broker allows
            in a name (Kafka: ``"A-Za-z0-9._-"``); the delimiters stay forbidden.
        max_length: longest topic the broker takes (``None``: no limit), counted in
            ``length_unit``. Set a little below the broker's limit where Dispytch derives
            names from the topic (``{topic}.dlq``).
        reserved_prefixes, reserved_suffixes: topic starts and ends that name the broker's own
            things; checked when a placeholder is at that end of the template.
    """

    broker: str
    delimiters: str
    wildcards: str = ""
    allowed: str | None = None
    max_length: int | None = None
    length_unit: Literal["characters", "bytes"] = "characters"
    reserved_prefixes: tuple[str, ...] = ()
    reserved_suffixes: tuple[str, ...] = ()
    _bad: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _whole: bool = field(init=False, repr=False, compare=False)
    _extra: str = field(init=False, repr=False, compare=False)
    _quick_length: int = field(init=False, repr=False, compare=False)
    _known: set[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # One character class (an alternation would cost twice as much per value): the allowed
        # set when there is one (it holds no whitespace or control character; its delimiters
        # are looked for with ``in``), else every forbidden character.
        if self.allowed is not None:
            bad = f"[^{self.allowed}]"
            extra = "".join(d for d in self.delimiters if re.match(bad, d) is None)
        else:
            bad = f"[{re.escape(self.delimiters + self.wildcards)}\\s{_CONTROL}]"
            extra = ""
        object.__setattr__(self, "_bad", re.compile(bad))
        object.__setattr__(self, "_extra", extra)
        whole = self.max_length is not None or self.reserved_prefixes or self.reserved_suffixes
        object.__setattr__(self, "_whole", bool(whole))
        # A topic this short is within the limit whatever its characters (4 UTF-8 bytes each).
        limit = self.max_length
        quick = limit if self.length_unit == "characters" else limit // 4 if limit else 0
        object.__setattr__(self, "_quick_length", quick if limit is not None else 1 << 62)
        object.__setattr__(self, "_known", set())

    def check(
        self, values: Mapping[str, str], topic: str, starts: str | None, ends: str | None
    ) -> None:
        """Check every placeholder value and the rendered ``topic`` (what an emit does).

        Values seen clean before are remembered (a bounded set): ids and tenants repeat, and
        a set lookup costs a fraction of the character scan.
        """
        known = self._known
        for name, value in values.items():
            if value not in known:
                self.check_value(name, value)
                if len(value) <= _KNOWN_LENGTH:
                    if len(known) >= _KNOWN_VALUES:
                        known.clear()
                    known.add(value)
        if self._whole and (
            len(topic) > self._quick_length
            or (starts is not None and self.reserved_prefixes)
            or (ends is not None and self.reserved_suffixes)
        ):
            self.check_topic(topic, values, starts=starts, ends=ends)

    def with_delimiter(self, delimiter: str) -> TopicRules:
        """These rules for an app that splits topics at ``delimiter`` instead."""
        if delimiter == self.delimiters:
            return self
        return replace(self, delimiters=delimiter)

    def is_clean(self, value: str) -> bool:
        """Whether ``value`` breaks no character rule (the fast path of every check)."""
        if not value or self._bad.search(value) is not None:
            return False
        extra = self._extra
        return not extra or (extra not in value if len(extra) == 1 else not self._has_extra(value))

    def _has_extra(self, value: str) -> bool:
        return any(d in value for d in self._extra)

    def _first_bad(self, value: str) -> int | None:
        match = self._bad.search(value)
        found = [match.start()] if match is not None else []
        found += [i for i in (value.find(d) for d in self._extra) if i != -1]
        return min(found) if found else None

    def violation(self, value: str) -> tuple[str, str] | None:
        """``(rule, explanation)`` for the first character rule ``value`` breaks, else ``None``."""
        if not value:
            return "empty", "it is empty"
        position = self._first_bad(value)
        if position is None:
            return None
        char = value[position]
        where = f"{loggable(char)!r} at position {position}"
        if char in self.delimiters:
            return "delimiter", f"it holds the topic delimiter {where}; it would add a segment"
        if char in self.wildcards:
            return "wildcard", f"it holds {where}, a wildcard or pattern character on {self.broker}"
        if char.isspace():
            return "whitespace", f"it holds whitespace ({where})"
        if unicodedata.category(char) in ("Cc", "Cf", "Cs"):
            return "control", f"it holds a control or invisible character ({where})"
        return "character", f"it holds {where}; {self.broker} allows only [{self.allowed}] in names"

    def check_value(self, name: str, value: str) -> None:
        """Raise :class:`InvalidTopicError` unless ``value`` may fill placeholder ``name``."""
        if self.is_clean(value):
            return
        broken = self.violation(value)
        if broken is not None:
            rule, why = broken
            raise InvalidTopicError(
                f"{{{name}}}={loggable(value, 80)!r} cannot fill a topic placeholder: {why}. "
                f"Check or map the field before emitting (for example an id of "
                f"[A-Za-z0-9_-]); on {self.broker} a placeholder value must be one non-empty "
                "segment without delimiters, wildcards, whitespace or control characters",
                field=name,
                rule=rule,
            )

    def check_topic(
        self, topic: str, fields: Mapping[str, str], *, starts: str | None, ends: str | None
    ) -> None:
        """Check a rendered topic: its length, and its reserved start (``starts``: the field
        at the start of the template, if any) and end (``ends``)."""
        limit = self.max_length
        if limit is not None and len(topic) > limit // 4:
            size = len(topic) if self.length_unit == "characters" else len(topic.encode())
            if size > limit:
                longest = max(fields, key=lambda name: len(fields[name]))
                raise InvalidTopicError(
                    f"topic {loggable(topic, 80)!r} is {size} {self.length_unit} long; "
                    f"{self.broker} takes at most {limit} here. {{{longest}}} is "
                    f"{len(fields[longest])} characters: shorten or map it (a hash, an id)",
                    field=longest,
                    rule="length",
                )
        if starts is not None:
            for prefix in self.reserved_prefixes:
                if topic.startswith(prefix):
                    self._reserved(starts, fields[starts], f"starts with {prefix!r}")
        if ends is not None:
            for suffix in self.reserved_suffixes:
                if topic.endswith(suffix):
                    self._reserved(ends, fields[ends], f"ends with {suffix!r}")

    def _reserved(self, name: str, value: str, how: str) -> None:
        raise InvalidTopicError(
            f"{{{name}}}={loggable(value, 80)!r} makes the topic one that {how}, which "
            f"{self.broker} reserves for its own names; map the field to a plain id",
            field=name,
            rule="reserved",
        )


def check_segments(segments: Mapping[str, str], rules: TopicRules) -> None:
    """Check the segments a consumer captured from a delivered topic (``{"user_id": "42"}``).

    Raises :class:`~dispytch.errors.PayloadValidationError` (the message is dead-lettered as a
    ``validation`` failure, never routed) when a segment breaks a character rule: a publisher
    on the broker wrote a topic no Dispytch emitter would have.
    """
    for name, value in segments.items():
        if rules.is_clean(value):
            continue
        broken = rules.violation(value)
        if broken is not None:
            raise PayloadValidationError(
                f"topic segment {{{name}}}={loggable(value, 80)!r} breaks the topic rule "
                f"{broken[0]!r}: {broken[1]}; not routed"
            )


#: Any producer that does not declare its broker's rules: both delimiters, every wildcard.
GENERIC = TopicRules("this broker", delimiters=".:", wildcards="*>#?[]^\\")
MEMORY = TopicRules("the memory broker", delimiters=":")
#: Kafka names: ``[A-Za-z0-9._-]``, at most 249 characters; 245 leaves room for ``.dlq``.
KAFKA = TopicRules(
    "Kafka", delimiters=".", allowed="A-Za-z0-9._-", max_length=245, reserved_prefixes=("__",)
)
#: AMQP routing keys and queue names: at most 255 bytes; 251 leaves room for ``.dlq``.
RABBITMQ = TopicRules(
    "RabbitMQ",
    delimiters=".",
    wildcards="*#",
    max_length=251,
    length_unit="bytes",
    reserved_prefixes=("amq.",),
)
#: Channel names: glob characters are patterns to PSUBSCRIBE.
REDIS = TopicRules("Redis", delimiters=":", wildcards="*?[]^\\")
#: Stream keys: globs matter to stream discovery (SCAN MATCH); ``….dlq`` streams hold dead letters.
REDIS_STREAMS = TopicRules(
    "Redis Streams", delimiters=":", wildcards="*?[]^\\", reserved_suffixes=(".dlq",)
)
#: Subjects: ``*`` and ``>`` are wildcards, ``$…`` and ``_INBOX.…`` belong to the server
#: (JetStream API, replies); 255 bytes keeps the protocol line of a dead letter short.
NATS = TopicRules(
    "NATS",
    delimiters=".",
    wildcards="*>",
    max_length=255,
    length_unit="bytes",
    reserved_prefixes=("$", "_INBOX."),
)
