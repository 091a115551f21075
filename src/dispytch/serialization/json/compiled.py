"""Envelope writers compiled per event class: for events made of plain values only.

An event whose fields (and those of the models it nests) are ``str``, ``int``, ``bool``,
``float``, ``None`` or nested models needs no serializer at all: its envelope is one string
template filled with the field values, each written the way ``json.dumps`` writes it (strings
with the standard library's own ASCII escaper, numbers with ``repr``). :func:`writer` reads the
class's pydantic schema once and generates that function; it costs about a third of writing
the body with pydantic-core, and the bytes are those of Dispytch 0.10 by construction.

What the schema cannot promise is checked per event: every value must have exactly its
declared type (``model_construct`` or an unvalidated assignment can put anything in a field;
a subclass of a nested model may serialize differently). Anything else makes the writer return
``None`` and the event takes the general path. A class with a type, serializer, alias rule or
setting not listed here gets no writer.
"""

from __future__ import annotations

import keyword
import math
from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any

__all__ = ["Writer", "writer"]

#: ``write(event, timestamp_ms)``: the envelope's bytes, or ``None`` for the general path.
Writer = Callable[[Any, int], "bytes | None"]

_SCALARS = {"str": "str", "int": "int", "bool": "bool", "float": "float"}
_VALIDATORS = ("function-after", "function-before", "function-wrap")


def _float(value: float) -> str:
    """A float as ``json.dumps`` writes it (its ``allow_nan`` spellings included)."""
    if math.isfinite(value):
        return float.__repr__(value)
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


class _Unsupported(Exception):
    """The schema has something :func:`writer` does not compile."""


class _Generator:
    """Builds the function's source: statements that read and check values, and the parts
    (literal text and value expressions) of the one template it fills."""

    def __init__(self, definitions: dict[str, Any]) -> None:
        self.definitions = definitions
        self.lines: list[str] = []
        self.template: list[str] = []  # %-template text, literals already %-escaped
        self.values: list[str] = []  # one expression per %s
        self.names: dict[str, Any] = {"_esc": encode_basestring_ascii, "_float": _float}
        self.count = 0

    def variable(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def literal(self, text: str) -> None:
        self.template.append(text.replace("%", "%%"))

    def value(self, expression: str) -> None:
        self.template.append("%s")
        self.values.append(expression)

    def model(self, schema: dict[str, Any], source: str, skip: str | None = None) -> None:
        """The JSON object of the model in variable ``source`` (``skip``: a field left out)."""
        schema = self.resolve(schema)
        if schema.get("type") != "model" or schema.get("root_model") or "serialization" in schema:
            raise _Unsupported
        config = schema.get("config") or {}
        if config.get("extra_fields_behavior") == "allow":
            raise _Unsupported
        fields_schema = schema.get("schema") or {}
        if (
            fields_schema.get("type") != "model-fields"
            or fields_schema.get("computed_fields")
            or fields_schema.get("extras_schema") is not None
        ):
            raise _Unsupported
        self.literal("{")
        first = True
        for name, field in fields_schema["fields"].items():
            if name == skip or field.get("serialization_exclude"):
                continue
            if (
                field.get("type") != "model-field"
                or "serialization_exclude_if" in field
                or not name.isidentifier()
                or keyword.iskeyword(name)
            ):
                raise _Unsupported
            key = field.get("serialization_alias", name)
            if not isinstance(key, str):
                raise _Unsupported
            self.literal(("" if first else ", ") + encode_basestring_ascii(key) + ": ")
            first = False
            variable = self.variable()
            self.lines.append(f"{variable} = {source}.{name}")
            self.field(field["schema"], variable)
        self.literal("}")

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while True:
            kind = schema.get("type")
            if kind == "definition-ref":
                schema = self.definitions[schema["schema_ref"]]
            elif kind == "default" or kind in _VALIDATORS:
                # A default or a validator changes what is stored, not how it is written;
                # what is stored is checked per event.
                if "serialization" in schema or "schema" not in schema:
                    raise _Unsupported
                schema = schema["schema"]
            else:
                return schema

    def field(self, schema: dict[str, Any], variable: str) -> None:
        schema = self.resolve(schema)
        if "serialization" in schema:
            raise _Unsupported
        kind = schema.get("type")
        if kind == "nullable":
            inner = self.resolve(schema["schema"])
            scalar = self.scalar(inner)
            if scalar is None:
                raise _Unsupported  # an optional nested model: not compiled
            check, text = scalar
            self.lines.append(
                f"if {variable} is not None and {check.format(variable)}: return None"
            )
            self.value(f"('null' if {variable} is None else {text.format(variable)})")
            return
        scalar = self.scalar(schema)
        if scalar is not None:
            check, text = scalar
            self.lines.append(f"if {check.format(variable)}: return None")
            self.value(text.format(variable))
            return
        if kind == "model":
            model = f"_M{len(self.names)}"
            self.names[model] = schema["cls"]
            self.lines.append(f"if type({variable}) is not {model}: return None")
            self.model(schema, variable)
            return
        raise _Unsupported

    @staticmethod
    def scalar(schema: dict[str, Any]) -> tuple[str, str] | None:
        """``(check that fails, JSON text)`` templates for a plain value, or ``None``."""
        kind = schema.get("type")
        if kind == "literal":
            expected = schema.get("expected") or []
            kinds = {type(v) for v in expected}
            if kinds == {str}:
                kind = "str"
            elif kinds == {int}:
                kind = "int"
            else:
                raise _Unsupported
        python = _SCALARS.get(kind or "")
        if python is None:
            return None
        check = f"type({{0}}) is not {python}"
        if python == "str":
            return check, "_esc({0})"
        if python == "bool":
            return check, "('true' if {0} else 'false')"
        if python == "float":
            return check, "_float({0})"
        return check, "int.__repr__({0})"


def writer(cls: type[Any], event_type: str) -> Writer | None:
    """The compiled envelope writer of event class ``cls``, or ``None`` when its schema holds
    something this module does not compile."""
    schema = cls.__pydantic_core_schema__
    definitions: dict[str, Any] = {}
    if schema.get("type") == "definitions":
        definitions = {d["ref"]: d for d in schema.get("definitions", []) if "ref" in d}
        schema = schema["schema"]
    generator = _Generator(definitions)
    generator.literal('{"id": ')
    generator.value("_esc(v0)")
    generator.literal(', "type": ' + encode_basestring_ascii(event_type) + ', "body": ')
    try:
        generator.model(schema, "event", skip="id")
    except (_Unsupported, KeyError, TypeError):
        return None
    generator.literal(', "timestamp": ')
    generator.value("int.__repr__(timestamp_ms)")
    generator.literal("}")
    names = generator.names
    names["_TEMPLATE"] = "".join(generator.template)
    body = "\n    ".join(
        [
            "v0 = event.id",
            "if type(v0) is not str or type(timestamp_ms) is not int: return None",
            *generator.lines,
            f"return (_TEMPLATE % ({', '.join(generator.values)},)).encode()",
        ]
    )
    source = f"def write(event, timestamp_ms):\n    {body}\n"
    exec(compile(source, f"<dispytch envelope writer of {cls.__qualname__}>", "exec"), names)
    function: Writer = names["write"]
    return function
