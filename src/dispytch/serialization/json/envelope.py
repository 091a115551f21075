"""The JSON envelope of an event written by pydantic-core, byte-identical to Dispytch 0.10's.

0.10 wrote ``json.dumps(envelope)``: ``", "`` and ``": "`` separators, ASCII escapes, keys in
the order ``id, type, body, timestamp``, the body from ``model_dump(mode="json")``. Building
that dict and walking it again costs more than the rest of an emit. Here pydantic-core writes
the body's JSON itself, indented by zero (``{\\n"a": 1,\\n"b": 2\\n}``): JSON strings never hold a
raw newline, so every newline is a separator's, and ``",\\n"`` to ``", "`` plus dropping the
other newlines gives 0.10's bytes. The envelope around it is four fixed pieces.

Where the two writers differ, the event takes the dict path (:func:`envelope_json` returns
``None``):

* floats: pydantic-core writes ``0.00001`` and ``1e-7`` where Python writes ``1e-05`` and
  ``1e-07``, and ``null`` for infinities and NaN (``json.dumps``: ``Infinity``, ``NaN``). An
  event class whose schema cannot hold a float (checked once per class, :func:`float_free`)
  needs no look at its bytes; any other event's bytes are searched for those spellings (and
  ``null``, which could be an infinity) and take the dict path when one occurs;
* the DEL character, which ``json.dumps`` escapes and pydantic-core does not;
* strings pydantic-core cannot write (lone surrogates) and classes that customise
  ``envelope``, ``model_dump`` or ``event_type``;
* integers longer than ``sys.get_int_max_str_digits()``, which ``json.dumps`` refuses
  (``ValueError``) and pydantic-core writes: the bytes of a class that can hold an integer are
  searched for such a run of digits when they are long enough to hold one;
* classes whose objects may hold one key twice (:func:`distinct_keys`, checked once per class):
  0.10's dict kept one, pydantic-core writes both; and classes that write infinities and NaN as
  strings (``ser_json_inf_nan="strings"``), which 0.10's ``model_dump`` left floats.

A batch (:func:`envelopes_json`, what ``emit_many`` uses) is written by one pydantic-core call
per run of events of one class: the list ``[{"id": ..., <fields>}, ...]`` indented by zero.
Its top-level elements are split at ``\n},\n{\n``, which a body holds only inside a list of
objects: when the split does not give one piece per event, the run is written event by event.
Each piece is ``{"id": <id>, <fields>}``: the envelope is that with the type after the id and
the timestamp at the end, which is why the class must serialize ``id`` first, under its name.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from json.encoder import encode_basestring_ascii
from typing import Any

from pydantic import BaseModel, TypeAdapter

from dispytch.events import EventBase
from dispytch.serialization.json.compiled import Writer, writer

__all__ = ["distinct_keys", "envelope_json", "envelopes_json", "float_free", "holds_ints"]

#: Spellings in pydantic-core's output that ``json.dumps`` would write differently (see above).
_DIFFERS = re.compile(rb"\x7f|null|0\.0000|\de-\d(?!\d)")
#: A set, not a frozenset: pydantic-core reads a set without converting it.
_ID = {"id"}
_ATTRIBUTE = "__dispytch_json_envelope__"
#: Between two top-level objects of a list written with ``indent=0``.
_SEPARATOR = b"\n},\n{\n"
#: What never occurs in JSON text (control characters are escaped): marks the splits.
_SPLIT = b"\x00"

#: Schema nodes whose JSON is the same from both writers and holds no float.
_PLAIN = frozenset(
    {
        "str",
        "int",
        "bool",
        "none",
        "bytes",
        "uuid",
        "url",
        "multi-host-url",
        "decimal",
        "datetime",
        "date",
        "time",
        "model",
        "model-fields",
        "model-field",
        "typed-dict",
        "typed-dict-field",
        "dataclass",
        "dataclass-args",
        "dataclass-field",
        "list",
        "set",
        "frozenset",
        "tuple",
        "dict",
        "nullable",
        "default",
        "union",
        "tagged-union",
        "definitions",
        "definition-ref",
        "lax-or-strict",
        "json-or-python",
        "function-after",
        "function-before",
        "function-wrap",
        "custom-error",
        "literal",
        "enum",
        "computed-field",
    }
)
#: Keys of a schema node that hold further schemas (a schema, a list or a dict of them).
_CHILDREN = (
    "schema",
    "items_schema",
    "keys_schema",
    "values_schema",
    "choices",
    "fields",
    "computed_fields",
    "definitions",
    "return_schema",
    "lax_schema",
    "strict_schema",
    "json_schema",
    "python_schema",
)
_SCALARS = (str, int, bool, type(None))
_WRAPPERS = ("function-after", "function-before", "function-wrap")


def float_free(schema: Any) -> bool:
    """Whether what ``schema`` serializes can never hold a float: every node is one of
    :data:`_PLAIN`, none has a custom serializer, and no model asks for temporal or duration
    values as numbers. Unknown node types count as floats (the safe answer)."""
    return all(_plain(node) for node in _nodes(schema))


def _nodes(schema: Any) -> Iterator[Any]:
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, list | tuple):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if not isinstance(node.get("type"), str):  # fields, tagged-union choices: by name
            stack.extend(node.values())
            continue
        yield node
        stack.extend(node[key] for key in _CHILDREN if key in node)


def _plain(node: dict[str, Any]) -> bool:
    kind = node["type"]
    if kind not in _PLAIN or "serialization" in node:
        return False
    if kind == "literal":
        return all(type(value) in _SCALARS for value in node.get("expected", ()))
    if kind == "enum":
        return node.get("sub_type") in ("str", "int")
    if kind == "function-before" or kind == "function-wrap" or kind == "function-after":
        return "schema" in node
    config = node.get("config")
    return not config or config.get("ser_json_temporal", "iso8601") == "iso8601"


#: Dict key schemas whose distinct values have distinct JSON keys (``1`` and ``"1"`` do not).
_KEYS = frozenset({"str", "int", "bool", "uuid", "enum"})
#: Schema nodes whose fields' keys must be distinct: (fields key, how a field names its key).
_OBJECTS = {"model-fields": "fields", "typed-dict": "fields", "dataclass-args": "fields"}
#: Every digit made a "0": a run of digits becomes a run of zeros, found by a plain search.
_ZEROS = bytes.maketrans(b"123456789", b"000000000")


def distinct_keys(schema: Any) -> bool:
    """Whether every object ``schema`` serializes has distinct keys, by construction.

    ``model_dump`` builds a dict, so two fields serialized under one name (an alias equal to
    another field's name or alias, a computed field's alias, an extra field, dict keys ``1``
    and ``"1"``) leave one key in 0.10's bytes, where pydantic-core writes both. Refused: such
    aliases, models and typed dicts that allow extra fields, dicts whose keys are not plain
    (``str``, ``int``, ``bool``, UUID, enum), values of unknown type (``Any``, a bare ``list``
    or ``dict``) and custom serializers without a return type, which may hold such a dict.
    """
    for node in _nodes(schema):
        kind = node["type"]
        if kind == "any" or _infers(node.get("serialization")):
            return False
        config = node.get("config") or {}
        if (
            config.get("extra_fields_behavior") == "allow"
            or node.get("extra_behavior") == "allow"
            or node.get("extras_schema") is not None
            or config.get("ser_json_inf_nan") == "strings"
        ):
            return False
        if kind == "dict" and not _plain_keys(node.get("keys_schema")):
            return False
        if kind in ("list", "set", "frozenset", "generator") and "items_schema" not in node:
            return False
        if kind == "dict" and "values_schema" not in node:
            return False
        if kind in _OBJECTS and not _unique_names(node):
            return False
    return True


def _infers(serialization: Any) -> bool:
    """Whether a custom serializer's result is written by inference (no return schema)."""
    if not isinstance(serialization, dict):
        return False
    if serialization.get("type") in ("function-plain", "function-wrap"):
        return_schema = serialization.get("return_schema")
        return return_schema is None or not distinct_keys(return_schema)
    return False


def _plain_keys(keys: Any) -> bool:
    while isinstance(keys, dict) and keys.get("type") in ("lax-or-strict", "json-or-python"):
        keys = keys.get("strict_schema") or keys.get("python_schema")
    if not isinstance(keys, dict) or "serialization" in keys:
        return False
    kind = keys.get("type")
    if kind == "literal":
        expected = keys.get("expected") or []
        return len({type(value) for value in expected}) <= 1 and all(
            type(value) in (str, int) for value in expected
        )
    return kind in _KEYS


def _unique_names(node: dict[str, Any]) -> bool:
    fields = node.get("fields") or {}
    entries = fields if isinstance(fields, list) else [{"name": k, **v} for k, v in fields.items()]
    names = [
        field.get("serialization_alias") or field.get("name")
        for field in entries
        if isinstance(field, dict) and not field.get("serialization_exclude")
    ]
    names += [
        field.get("alias") or field.get("property_name")
        for field in node.get("computed_fields") or ()
        if isinstance(field, dict)
    ]
    return len(names) == len(set(names))


def holds_ints(schema: Any) -> bool:
    """Whether what ``schema`` serializes may hold an integer (custom serializers may)."""
    return any(
        node["type"] in ("int", "enum", "literal") or "serialization" in node
        for node in _nodes(schema)
    )


def _too_many_digits(data: bytes) -> bool:
    """Whether ``data`` may hold an integer ``json.dumps`` refuses to write (or a string of as
    many digits: the dict path then decides)."""
    limit = sys.get_int_max_str_digits()
    return 0 < limit < len(data) and b"0" * (limit + 1) in data.translate(_ZEROS)


class _Plan:
    """How one event class's envelope is written, worked out on its first emit.

    Kept on the class (a subclass inherits the attribute, hence ``cls``)."""

    __slots__ = (
        "batched",
        "checked",
        "cls",
        "dump_many",
        "head",
        "ints",
        "to_json",
        "type_json",
        "write",
    )

    def __init__(self, cls: type[EventBase]) -> None:
        self.cls = cls
        self.to_json: Callable[..., bytes] = cls.__pydantic_serializer__.to_json
        #: Everything between the id and the body; ``None``: the class takes the dict path.
        self.head: bytes | None = None
        self.type_json = b""
        #: Whether the bytes need a look for spellings the two writers disagree on.
        self.checked = True
        #: Whether the bytes need a look for integers json.dumps refuses to write.
        self.ints = True
        #: Whether a batch can be written in one call (see the module docstring).
        self.batched = False
        self.dump_many: Callable[..., bytes] | None = None
        #: The class's compiled writer (:mod:`.compiled`), if its fields are plain values.
        self.write: Writer | None = None
        event_type = getattr(cls, "__event_type__", None)
        if (
            cls.envelope is EventBase.envelope
            and cls.model_dump is BaseModel.model_dump
            and cls.event_type is EventBase.event_type
            and isinstance(event_type, str)
            and distinct_keys(cls.__pydantic_core_schema__)
        ):
            self.type_json = encode_basestring_ascii(event_type).encode()
            self.head = b', "type": %s, "body": ' % self.type_json
            self.checked = not float_free(cls.__pydantic_core_schema__)
            self.ints = holds_ints(cls.__pydantic_core_schema__)
            self.batched = _id_first(cls)
            self.write = writer(cls, event_type)
        setattr(cls, _ATTRIBUTE, self)

    def many(self) -> Callable[..., bytes] | None:
        """``dump_json`` of a list of this class's events (built on the first batch)."""
        if self.dump_many is None and self.batched:
            try:
                self.dump_many = TypeAdapter(list[self.cls]).dump_json  # type: ignore[name-defined]
            except Exception:  # a class pydantic cannot build a list adapter for
                self.batched = False
        return self.dump_many


def _id_first(cls: type[EventBase]) -> bool:
    """Whether ``cls`` serializes ``id`` first, under that name, followed by other fields."""
    fields = cls.model_fields
    first = next(iter(fields), None)
    if first != "id" or len(fields) < 2:
        return False
    field = fields["id"]
    if (
        field.alias is not None
        or field.serialization_alias is not None
        or field.exclude
        or getattr(field, "exclude_if", None) is not None
        or not _written_as_is(cls, "id")
    ):
        return False
    decorators = cls.__pydantic_decorators__
    if decorators.model_serializers:
        return False
    return not any(
        "id" in d.info.fields or "*" in d.info.fields for d in decorators.field_serializers.values()
    )


def _written_as_is(cls: type[EventBase], name: str) -> bool:
    """Whether field ``name`` of ``cls`` is a ``str`` written as it is (no serializer, as an
    annotated ``PlainSerializer`` would add, on it or on what wraps it)."""
    try:
        schema = cls.__pydantic_core_schema__
        if schema["type"] == "definitions":
            schema = schema["schema"]
        node = schema["schema"]["fields"][name]["schema"]
        while node["type"] in ("default", *_WRAPPERS) and "serialization" not in node:
            node = node["schema"]
    except (KeyError, TypeError):
        return False
    return node["type"] == "str" and "serialization" not in node


def _plan_of(cls: type[EventBase]) -> _Plan:
    plan: _Plan | None = getattr(cls, _ATTRIBUTE, None)
    if plan is None or plan.cls is not cls:
        plan = _Plan(cls)
    return plan


def envelope_json(event: EventBase, timestamp_ms: int | None = None) -> bytes | None:
    """``json.dumps(event.envelope(timestamp_ms)).encode()``, written by a compiled writer
    (:mod:`.compiled`) or pydantic-core; or ``None`` where that would differ (the caller then
    takes the dict path)."""
    cls = type(event)
    plan: _Plan | None = getattr(cls, _ATTRIBUTE, None)
    if plan is None or plan.cls is not cls:
        plan = _Plan(cls)
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000)
    write = plan.write
    if write is not None:
        written = write(event, timestamp_ms)
        if written is not None:
            return written
    head = plan.head
    event_id = event.id
    if head is None or event_id.__class__ is not str or timestamp_ms.__class__ is not int:
        return None
    try:
        body: bytes = plan.to_json(event, indent=0, ensure_ascii=True, by_alias=True, exclude=_ID)
    except ValueError:  # a lone surrogate, say: json.dumps escapes it
        return None
    if plan.checked:
        if _DIFFERS.search(body) is not None:
            return None
    elif b"\x7f" in body:
        return None
    if plan.ints and _too_many_digits(body):
        return None
    return b'{"id": %s%s%s, "timestamp": %d}' % (
        encode_basestring_ascii(event_id).encode(),
        head,
        body.replace(b",\n", b", ").replace(b"\n", b""),
        timestamp_ms,
    )


def envelopes_json(events: Sequence[EventBase], timestamp_ms: int) -> list[bytes | None]:
    """:func:`envelope_json` of each event, written a run of one class at a time."""
    out: list[bytes | None] = []
    count = len(events)
    start = 0
    while start < count:
        cls = type(events[start])
        end = start + 1
        while end < count and type(events[end]) is cls:
            end += 1
        run = events[start:end] if start or end < count else events
        written = _run(_plan_of(cls), run, timestamp_ms) if end - start > 1 else None
        out += written or [envelope_json(event, timestamp_ms) for event in run]
        start = end
    return out


def _run(plan: _Plan, events: Sequence[EventBase], timestamp_ms: int) -> list[bytes | None] | None:
    """The envelopes of ``events`` (all of ``plan``'s class) from one pydantic-core call, or
    ``None`` when the run must be written event by event."""
    write = plan.write
    if write is not None:
        return [
            write(event, timestamp_ms) or envelope_json(event, timestamp_ms) for event in events
        ]
    dump = plan.many()
    if dump is None or timestamp_ms.__class__ is not int:
        return None
    try:
        data: bytes = dump(events, indent=0, by_alias=True)
        if not data.isascii():
            data = dump(events, indent=0, ensure_ascii=True, by_alias=True)
    except ValueError:
        return None
    if data.count(_SEPARATOR) != len(events) - 1:
        return None  # a body holds a list of objects: the split would cut it
    if plan.checked:
        if _DIFFERS.search(data) is not None:
            return None
    elif b"\x7f" in data:
        return None
    if plan.ints and _too_many_digits(data):
        return None
    pieces = (
        data.replace(_SEPARATOR, b"}\x00{")
        .replace(b",\n", b", ")
        .replace(b"\n", b"")[1:-1]
        .split(_SPLIT)
    )
    middle = b', "type": %s, "body": {' % plan.type_json
    tail = b', "timestamp": %d}' % timestamp_ms
    out: list[bytes | None] = []
    for event, piece in zip(events, pieces, strict=True):
        event_id = event.id
        if event_id.__class__ is not str:
            out.append(None)
            continue
        # piece: {"id": <id>, <fields>}; the id's JSON is what json.dumps writes (ASCII).
        cut = 7 + len(encode_basestring_ascii(event_id))
        if not piece.startswith(b", ", cut):  # no field after the id: the others are excluded
            out.append(envelope_json(event, timestamp_ms))
            continue
        out.append(b"".join((piece[:cut], middle, piece[cut + 2 :], tail)))
    return out
