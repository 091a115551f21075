"""JSON Schemas for an AsyncAPI document: pydantic models as components, the envelope around
them, and the headers of dead letters. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from dispytch.events import EventBase
from dispytch.seam import DEAD_LETTER_REASONS

__all__ = [
    "DEAD_LETTER_HEADERS",
    "Schemas",
    "describe",
    "envelope_schema",
    "standalone",
]

REF_PREFIX = "#/components/schemas/"

Mode = Literal["validation", "serialization"]


class Schemas:
    """The ``components.schemas`` of a document, built once from every body model it needs.

    Models are generated together, so a model used by several messages is defined once and
    name clashes (two ``User`` classes from different modules) get distinct names.
    """

    def __init__(self, models: Iterable[tuple[type[BaseModel], Mode]]) -> None:
        wanted = list(dict.fromkeys(models))
        self.refs: dict[tuple[type[BaseModel], Mode], str] = {}
        self.components: dict[str, Any] = {}
        if not wanted:
            return
        modes: list[tuple[type[BaseModel], JsonSchemaMode]] = list(wanted)
        keys, top = models_json_schema(modes, ref_template=REF_PREFIX + "{model}")
        for (model, mode), schema in keys.items():
            self.refs[(model, mode)] = schema["$ref"]  # type: ignore[index]
        for name, schema in top.get("$defs", {}).items():
            self.components[name] = to_asyncapi(schema)
        for (model, _mode), ref in self.refs.items():
            if issubclass(model, EventBase):
                # The envelope carries the id; the body on the wire has every field but it.
                _drop_property(self.components[ref.removeprefix(REF_PREFIX)], "id")

    def ref(self, model: type[BaseModel], mode: Mode) -> str:
        return self.refs[(model, mode)]

    def name(self, model: type[BaseModel], mode: Mode) -> str:
        return self.refs[(model, mode)].removeprefix(REF_PREFIX)

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        """``schema``, or the component it points to when it is a local ``$ref``."""
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF_PREFIX):
            target = self.components.get(ref.removeprefix(REF_PREFIX))
            if isinstance(target, dict):
                return target
        return schema


def _drop_property(schema: dict[str, Any], name: str) -> None:
    schema.get("properties", {}).pop(name, None)
    required = schema.get("required")
    if isinstance(required, list) and name in required:
        required.remove(name)
        if not required:
            del schema["required"]


def to_asyncapi(schema: Any) -> Any:
    """A pydantic (JSON Schema 2020-12) schema in the AsyncAPI 3.0 dialect (draft 07 based).

    Tuples use ``items: [...]`` instead of ``prefixItems``, and ``discriminator`` is the
    property name (a string) instead of OpenAPI's object.
    """
    if isinstance(schema, list):
        return [to_asyncapi(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: to_asyncapi(value) for key, value in schema.items()}
    if "prefixItems" in out:
        tail = out.pop("items", None)
        out["items"] = out.pop("prefixItems")
        if tail is not None:
            out["additionalItems"] = tail
    discriminator = out.get("discriminator")
    if isinstance(discriminator, dict):
        name = discriminator.get("propertyName")
        if isinstance(name, str):
            out["discriminator"] = name
        else:
            del out["discriminator"]
    return out


def standalone(schema: dict[str, Any]) -> dict[str, Any]:
    """A schema generated on its own (a topic segment's), with its ``$defs`` inlined: inside
    an AsyncAPI document ``#/$defs/...`` would point at the document's root."""
    defs = schema.get("$defs", {})

    def inline(node: Any, seen: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(item, seen) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            name = ref.removeprefix("#/$defs/")
            if name in defs and name not in seen:
                rest = {k: v for k, v in node.items() if k != "$ref"}
                return inline({**defs[name], **rest}, (*seen, name))
            return {k: v for k, v in node.items() if k != "$ref"}  # recursive: leave it open
        return {k: inline(v, seen) for k, v in node.items() if k != "$defs"}

    return to_asyncapi(inline(schema, ()))  # type: ignore[no-any-return]


def envelope_schema(event_type: str, body: dict[str, Any]) -> dict[str, Any]:
    """The Dispytch envelope ``{id, type, body, timestamp}`` around ``body``."""
    return {
        "type": "object",
        "description": "The Dispytch envelope (wire format of Dispytch 0.10 and later).",
        "required": ["id", "type", "body", "timestamp"],
        "properties": {
            "id": {"type": "string", "description": "Unique id of the event (a uuid4 by default)."},
            "type": {
                "type": "string",
                "const": event_type,
                "description": "Event type; handlers are chosen by topic and this type.",
            },
            "body": body,
            "timestamp": {
                "type": "integer",
                "description": "When the event was emitted, in milliseconds since the Unix epoch.",
            },
        },
    }


_HEADER = "x-dispytch-"

DEAD_LETTER_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": "Headers a dead letter carries next to the original headers.",
    "required": [_HEADER + "reason", _HEADER + "error-type", _HEADER + "failed-at"],
    "properties": {
        _HEADER + "reason": {
            "type": "string",
            "enum": list(DEAD_LETTER_REASONS),
            "description": "Why the message was dead-lettered.",
        },
        _HEADER + "error-type": {"type": "string", "description": "Class of the exception."},
        _HEADER + "error-message": {"type": "string", "description": "Its message."},
        _HEADER + "handler": {"type": "string", "description": "The handler that failed."},
        _HEADER + "attempts": {"type": "string", "description": "Attempts made (a number)."},
        _HEADER + "original-topic": {"type": "string", "description": "Where it was consumed."},
        _HEADER + "original-partition": {
            "type": "string",
            "description": "Partition it was consumed from (Kafka).",
        },
        _HEADER + "original-offset": {
            "type": "string",
            "description": "Offset or id it had on the original topic.",
        },
        _HEADER + "failed-at": {
            "type": "string",
            "description": "When it failed (milliseconds since the Unix epoch).",
        },
    },
}

_BOUNDS = (
    ("exclusiveMinimum", "> {}"),
    ("minimum", ">= {}"),
    ("exclusiveMaximum", "< {}"),
    ("maximum", "<= {}"),
    ("minLength", "at least {} characters"),
    ("maxLength", "at most {} characters"),
    ("pattern", "matching {}"),
    ("multipleOf", "a multiple of {}"),
)


def describe(schema: dict[str, Any]) -> str:
    """A short human description of a scalar schema: ``integer, > 0``."""
    kind = schema.get("type")
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    if "const" in schema:
        return f"exactly {schema['const']}"
    if "anyOf" in schema:
        return " or ".join(describe(option) for option in schema["anyOf"])
    parts = [kind if isinstance(kind, str) else "string"]
    if "format" in schema:
        parts[0] += f" ({schema['format']})"
    parts.extend(text.format(schema[key]) for key, text in _BOUNDS if key in schema)
    return ", ".join(parts)
