"""Events: the :class:`EventBase` users emit and the :class:`Event` handlers receive.

The wire envelope is ``{"id": str, "type": str, "body": {...}, "timestamp": int_ms}``, the format
of Dispytch 0.10, kept byte-compatible in both directions.
"""

from __future__ import annotations

import string
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, Field, PrivateAttr

from dispytch.errors import EventTemplateError, RegistrationError
from dispytch.topic_rules import TopicRules

__all__ = ["Envelope", "Event", "EventBase", "TopicTemplate"]


def _new_id() -> str:
    return str(uuid.uuid4())


class TopicTemplate:
    """A topic such as ``"user:{user_id}:events"``, parsed once per event class.

    :meth:`render` fills the placeholders from an event and, given a broker's
    :class:`~dispytch.topic_rules.TopicRules`, checks every value first (no delimiter,
    wildcard, whitespace or control character, not empty, within the broker's length).
    """

    __slots__ = ("_ends", "_literal", "_starts", "fields", "fixed", "template")

    def __init__(self, template: str) -> None:
        self.template = template
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise RegistrationError(
                f"topic {template!r} is malformed ({exc}); put field names in single braces, "
                "like 'user:{user_id}:events'"
            ) from None
        names: list[str] = []
        for _, name, spec, conv in parsed:
            if name is None:
                continue
            if not name.isidentifier() or spec or conv:
                raise RegistrationError(
                    f"topic {template!r} has the placeholder {{{name}}}; a placeholder must be a "
                    "plain field name, like {user_id}"
                )
            names.append(name)
        self.fields: tuple[str, ...] = tuple(names)
        # Without placeholders the topic is fixed; "{{" still means "{", as with placeholders.
        self._literal = "".join(text for text, _, _, _ in parsed)
        #: The topic, when it has no placeholders (``None`` otherwise).
        self.fixed: str | None = None if names else self._literal
        # The placeholder the topic starts / ends with, if any (reserved prefixes and suffixes).
        self._starts: str | None = None
        self._ends: str | None = None
        if names:
            self._starts = names[0] if parsed[0][0] == "" else None
            self._ends = names[-1] if parsed[-1][1] is not None else None

    def render(self, event: BaseModel, rules: TopicRules | None = None) -> str:
        """The topic of ``event``; with ``rules``, each placeholder value is checked first
        (:class:`~dispytch.errors.InvalidTopicError` names the field and the broken rule)."""
        if not self.fields:
            return self._literal
        if rules is None:
            return self.template.format_map({name: getattr(event, name) for name in self.fields})
        # format(), as str.format would: an Enum member gives its value, not its name.
        values = {
            name: value if (value := getattr(event, name)).__class__ is str else format(value, "")
            for name in self.fields
        }
        topic = self.template.format_map(values)
        rules.check(values, topic, self._starts, self._ends)
        return topic


class EventBase(BaseModel):
    """Base class of events a service emits.

    Class attributes: ``__topic__`` (may hold ``{field}`` placeholders filled from the event),
    ``__event_type__``, and optionally ``__backend_config__`` (e.g. ``KafkaEventConfig``), which
    can also be given per event as a constructor keyword.
    """

    __topic__: ClassVar[str]
    __event_type__: ClassVar[str]
    __backend_config__: ClassVar[BaseModel | None] = None
    __topic_template__: ClassVar[TopicTemplate | None] = None

    id: str = Field(default_factory=_new_id)
    _dispytch_config: BaseModel | None = PrivateAttr(default=None)

    def __init__(self, /, __backend_config__: BaseModel | None = None, **data: Any) -> None:
        super().__init__(**data)
        if __backend_config__ is not None:
            self._dispytch_config = __backend_config__

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        topic = cls.__dict__.get("__topic__")
        if topic is None:
            return
        if not isinstance(topic, str):
            raise RegistrationError(f"{cls.__name__}.__topic__ must be a str, got {topic!r}")
        template = TopicTemplate(topic)
        missing = [name for name in template.fields if name not in cls.model_fields]
        if missing:
            raise EventTemplateError(
                f"{cls.__name__}.__topic__ = {topic!r} uses {missing}, which "
                f"{'is not a field' if len(missing) == 1 else 'are not fields'} of "
                f"{cls.__name__}; add the field or fix the placeholder"
            )
        cls.__topic_template__ = template

    @property
    def backend_config(self) -> BaseModel | None:
        """The per-event backend config if one was given, else the class's."""
        return own_config(self) or type(self).__backend_config__

    def topic(self, rules: TopicRules | None = None) -> str:
        """The concrete topic this event goes to, placeholders filled in (and checked against
        a broker's ``rules`` when given; emitters always pass their broker's)."""
        template = type(self).__topic_template__
        if template is None:
            raise EventTemplateError(
                f"{type(self).__name__} has no __topic__; set __topic__ = '...' on the class"
            )
        return template.render(self, rules)

    def event_type(self) -> str:
        try:
            return type(self).__event_type__
        except AttributeError:
            raise EventTemplateError(
                f"{type(self).__name__} has no __event_type__; set __event_type__ = '...' "
                "on the class"
            ) from None

    def envelope(self, timestamp_ms: int | None = None) -> dict[str, Any]:
        """The wire envelope of this event, as a dict ready for a serializer."""
        return {
            "id": self.id,
            "type": self.event_type(),
            "body": self.model_dump(mode="json", by_alias=True, exclude={"id"}),
            "timestamp": int(time.time() * 1000) if timestamp_ms is None else timestamp_ms,
        }


def own_config(event: EventBase) -> BaseModel | None:
    """The backend config given to this event itself (``None``: the class's applies)."""
    # Straight from pydantic's private-attribute dict: ``event._dispytch_config`` goes through
    # BaseModel.__getattr__, which costs more than the rest of an emit's envelope.
    private = event.__pydantic_private__
    return private.get("_dispytch_config") if private else None


@dataclass(slots=True, frozen=True)
class Envelope:
    """A decoded, not yet validated message: what every deserializer returns."""

    id: str
    type: str
    body: dict[str, Any]
    timestamp: int

    def __init__(self, id: str, type: str, body: dict[str, Any], timestamp: int) -> None:
        # Frozen, built once per message: the slots' own setters cost less than the
        # object.__setattr__ calls of the generated __init__.
        _set_id(self, id)
        _set_type(self, type)
        _set_body(self, body)
        _set_timestamp(self, timestamp)


_set_id = Envelope.__dict__["id"].__set__
_set_type = Envelope.__dict__["type"].__set__
_set_body = Envelope.__dict__["body"].__set__
_set_timestamp = Envelope.__dict__["timestamp"].__set__


BodyT = TypeVar("BodyT")


_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class _HeadersSlot:
    """Where an :class:`Event` keeps its headers: outside the dataclass fields, which stay
    0.10's five (equality and ``dataclasses.asdict`` ignore headers)."""

    __slots__ = ("_headers",)
    _headers: Mapping[str, str] | None


@dataclass(slots=True, repr=False)
class Event(_HeadersSlot, Generic[BodyT]):
    """What a handler receives: ``Event[Model]`` gives a validated ``body`` of type ``Model``;
    bare ``Event`` gives the body as a dict. ``headers`` are the message's headers, read-only.

    A dataclass, as in Dispytch 0.10: events compare equal field by field and work with
    ``dataclasses.asdict``. Construct one with keywords; the positional order differs from
    0.10's (``id, type, topic`` here, ``id, topic, type`` there).
    """

    id: str
    type: str
    topic: str
    body: BodyT
    timestamp: int

    def __init__(
        self,
        id: str,
        type: str,
        topic: str,
        body: BodyT,
        timestamp: int,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.id = id
        self.type = type
        self.topic = topic
        self.body = body
        self.timestamp = timestamp
        # The slot is _HeadersSlot's; mypy's dataclass plugin only sees the fields' slots.
        self._headers = headers  # type: ignore[misc]

    @property
    def headers(self) -> Mapping[str, str]:
        """The message's headers (read-only). Redis Pub/Sub carries none: always empty there."""
        headers = self._headers
        return MappingProxyType(headers) if headers else _NO_HEADERS

    def __repr__(self) -> str:
        return (
            f"Event(id={self.id!r}, type={self.type!r}, topic={self.topic!r}, "
            f"timestamp={self.timestamp}, body={self.body!r})"
        )
