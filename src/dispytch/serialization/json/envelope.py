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
  ``envelope``, ``model_dump`` or ``event_type``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring_ascii
from typing import Any

from pydantic import BaseModel

from dispytch.events import EventBase

__all__ = ["envelope_json", "float_free"]

#: Spellings in pydantic-core's output that ``json.dumps`` would write differently (see above).
_DIFFERS = re.compile(rb"\x7f|null|0\.0000|\de-\d(?!\d)")
#: A set, not a frozenset: pydantic-core reads a set without converting it.
_ID = {"id"}
_ATTRIBUTE = "__dispytch_json_envelope__"

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


class _Plan:
    """How one event class's envelope is written, worked out on its first emit.

    Kept on the class (a subclass inherits the attribute, hence ``cls``)."""

    __slots__ = ("checked", "cls", "head", "to_json")

    def __init__(self, cls: type[EventBase]) -> None:
        self.cls = cls
        self.to_json: Callable[..., bytes] = cls.__pydantic_serializer__.to_json
        #: Everything between the id and the body; ``None``: the class takes the dict path.
        self.head: bytes | None = None
        #: Whether the bytes need a look for spellings the two writers disagree on.
        self.checked = True
        event_type = getattr(cls, "__event_type__", None)
        if (
            cls.envelope is EventBase.envelope
            and cls.model_dump is BaseModel.model_dump
            and cls.event_type is EventBase.event_type
            and isinstance(event_type, str)
        ):
            self.head = b', "type": %s, "body": ' % encode_basestring_ascii(event_type).encode()
            self.checked = not float_free(cls.__pydantic_core_schema__)
        setattr(cls, _ATTRIBUTE, self)


def envelope_json(event: EventBase, timestamp_ms: int | None = None) -> bytes | None:
    """``json.dumps(event.envelope(timestamp_ms)).encode()``, written by pydantic-core; or
    ``None`` where the two would differ (the caller then takes the dict path)."""
    cls = type(event)
    plan: _Plan | None = getattr(cls, _ATTRIBUTE, None)
    if plan is None or plan.cls is not cls:
        plan = _Plan(cls)
    head = plan.head
    event_id = event.id
    if head is None or event_id.__class__ is not str:
        return None
    if timestamp_ms is None:
        timestamp_ms = int(time.time() * 1000)
    elif timestamp_ms.__class__ is not int:
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
    return b'{"id": %s%s%s, "timestamp": %d}' % (
        encode_basestring_ascii(event_id).encode(),
        head,
        body.replace(b",\n", b", ").replace(b"\n", b""),
        timestamp_ms,
    )
