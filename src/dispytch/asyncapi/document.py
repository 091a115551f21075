"""The AsyncAPI 3.0 document of an :class:`~dispytch.App`. Pure: App in, dict out.

* **servers** from the broker URL (credentials never included), with the protocol's bindings;
* **channels**: one per handler topic pattern and per emitted event class (same address, same
  channel), with a parameter per ``{placeholder}`` typed by the handler's ``TopicSegment`` (or
  the event's field), plus one dead-letter channel per handled topic;
* **messages**: the Dispytch envelope ``{id, type, body, timestamp}`` with the body's JSON
  Schema from the pydantic model (``components.schemas``);
* **operations**: ``receive`` per handler (retry policy as ``x-dispytch-retry``), ``send`` per
  event class declared with :meth:`App.publishes`, ``send`` of dead letters per handled topic;
* listener settings (group, concurrency, ordering...) as ``x-dispytch-listener``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from dispytch.asyncapi.schemas import (
    DEAD_LETTER_HEADERS,
    Mode,
    Schemas,
    describe,
    envelope_schema,
    standalone,
)
from dispytch.asyncapi.transports import Transport, transport_for
from dispytch.events import EventBase
from dispytch.handler import HandlerSpec

if TYPE_CHECKING:
    from dispytch.app import App

__all__ = ["ASYNCAPI_VERSION", "asyncapi"]

ASYNCAPI_VERSION = "3.0.0"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")
_DEAD_LETTER_MESSAGE = "DeadLetter"


def _ident(text: str) -> str:
    """An id usable as a key in channels/operations/messages (letters, digits, ``_``, ``-``)."""
    return _UNSAFE.sub("_", text).strip("_") or "x"


def _unique(base: str, taken: dict[str, Any] | set[str]) -> str:
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


def _summary(obj: Any) -> str | None:
    """The first paragraph of ``obj``'s own docstring (a class's is not inherited)."""
    doc = vars(obj).get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return None
    return " ".join(inspect.cleandoc(doc).split("\n\n", 1)[0].split())


@dataclass(slots=True)
class _Channel:
    id: str
    address: str
    dead_letters_of: str | None = None
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)  # key -> components message name
    sources: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Message:
    key: str
    event_type: str
    model: type[BaseModel] | None
    ref: str | None  # the body schema; None for a raw dict body


def _handlers(app: App) -> Iterator[HandlerSpec]:
    # The app's handler groups, in registration order (the app itself first).
    for group in app._groups:
        yield from group.handlers


def _body_model(spec: HandlerSpec) -> type[BaseModel] | None:
    for body in spec.plan.bodies:
        if isinstance(body, type) and issubclass(body, BaseModel):
            return body
    return None


class _Builder:
    def __init__(self, app: App, transport: Transport) -> None:
        self.app = app
        self.transport = transport
        self.handlers = list(_handlers(app))
        self.published: list[type[EventBase]] = list(app.published)
        models: list[tuple[type[BaseModel], Mode]] = []
        for spec in self.handlers:
            model = _body_model(spec)
            if model is not None:
                models.append((model, "validation"))
        models.extend((cls, "serialization") for cls in self.published)
        self.schemas = Schemas(models)
        self.channels: dict[str, _Channel] = {}  # by address
        # One message per event type and body schema: a handler's Event[OrderPlaced] and an
        # emitted OrderPlaced describe the same message.
        self.messages: dict[tuple[str, str | None], _Message] = {}
        self.handler_messages: list[_Message] = []
        self.published_messages: list[_Message] = []

    # -- pieces ---------------------------------------------------------------------------------

    def channel(self, address: str, dead_letters_of: str | None = None) -> _Channel:
        found = self.channels.get(address)
        if found is None:
            taken = {c.id for c in self.channels.values()}
            base = _ident(address.replace("{", "").replace("}", ""))
            found = _Channel(_unique(base, taken), address, dead_letters_of)
            self.channels[address] = found
        return found

    def message(self, event_type: str, model: type[BaseModel] | None, mode: Mode) -> _Message:
        ref = None if model is None else self.schemas.ref(model, mode)
        found = self.messages.get((event_type, ref))
        if found is None:
            found = _Message("", event_type, model, ref)
            self.messages[(event_type, ref)] = found
        return found

    def parameter(
        self, channel: _Channel, name: str, schema: dict[str, Any], location: str | None
    ) -> None:
        param = channel.parameters.get(name)
        if param is not None and "x-dispytch-schema" in param and location is None:
            return  # a handler's TopicSegment type already describes it
        schema = self.schemas.resolve(schema)
        out: dict[str, Any] = {"description": f"Topic segment {{{name}}}: {describe(schema)}."}
        if isinstance(schema.get("enum"), list) and all(isinstance(v, str) for v in schema["enum"]):
            out["enum"] = list(schema["enum"])
        if location is not None:
            out["location"] = location
        if param is not None and location is not None:
            # Keep the handler's stricter type; add where an emitter takes the value from.
            param["location"] = location
            return
        out["x-dispytch-schema"] = schema
        channel.parameters[name] = out

    # -- collection -----------------------------------------------------------------------------

    def collect(self) -> None:
        for spec in self.handlers:
            channel = self.channel(spec.topic)
            channel.sources.append(f"handled by {spec.name}")
            for seg in spec.plan.segments:
                self.parameter(channel, seg.name, standalone(seg.adapter.json_schema()), None)
            for name in _PLACEHOLDER.findall(spec.topic):
                if name not in channel.parameters:
                    self.parameter(channel, name, {"type": "string"}, None)
            msg = self.message(spec.event_type, _body_model(spec), "validation")
            self.handler_messages.append(msg)
        for cls in self.published:
            template = cls.__topic__
            channel = self.channel(template)
            channel.sources.append(f"emitted as {cls.__name__}")
            fields = self.schemas.components[self.schemas.name(cls, "serialization")].get(
                "properties", {}
            )
            for name in _PLACEHOLDER.findall(template):
                schema = fields.get(name, {"type": "string"})
                self.parameter(channel, name, schema, f"$message.payload#/body/{name}")
            self.published_messages.append(self.message(cls.__event_type__, cls, "serialization"))
        for spec in self.handlers:
            address = self.transport.dead_letter_address(spec.topic)
            source = self.channels[spec.topic]
            dead = self.channel(address, dead_letters_of=spec.topic)
            for name, param in source.parameters.items():
                copied = {k: v for k, v in param.items() if k != "location"}
                dead.parameters.setdefault(name, copied)
        self.name_messages()

    def name_messages(self) -> None:
        by_type: dict[str, list[_Message]] = {}
        for msg in self.messages.values():
            by_type.setdefault(msg.event_type, []).append(msg)
        taken: set[str] = {_DEAD_LETTER_MESSAGE}
        for event_type, variants in by_type.items():
            for msg in variants:
                base = _ident(event_type)
                if len(variants) > 1:
                    suffix = msg.ref.rsplit("/", 1)[1] if msg.ref else "dict"
                    base = f"{base}-{_ident(suffix)}"
                msg.key = _unique(base, taken)
                taken.add(msg.key)

    # -- output ---------------------------------------------------------------------------------

    def message_object(self, msg: _Message, content_type: str) -> dict[str, Any]:
        if msg.ref is None:
            body: dict[str, Any] = {"type": "object", "description": "Any JSON object."}
        else:
            body = {"$ref": msg.ref}
        out: dict[str, Any] = {"name": msg.event_type}
        if msg.model is not None:
            out["title"] = msg.model.__name__
            summary = _summary(msg.model)
            if summary:
                out["summary"] = summary
        out["contentType"] = content_type
        out["payload"] = envelope_schema(msg.event_type, body)
        out["x-dispytch-event-type"] = msg.event_type
        return out

    def build(self, title: str, version: str, description: str | None) -> dict[str, Any]:
        self.collect()
        app = self.app
        content_type = str(getattr(app.serializer, "content_type", None) or "application/json")
        doc: dict[str, Any] = {"asyncapi": ASYNCAPI_VERSION}
        info: dict[str, Any] = {"title": title, "version": version}
        if description:
            info["description"] = description
        doc["info"] = info
        doc["defaultContentType"] = content_type
        doc["servers"] = self.transport.servers()

        messages = {m.key: self.message_object(m, content_type) for m in self.messages.values()}
        if any(c.dead_letters_of for c in self.channels.values()):
            messages[_DEAD_LETTER_MESSAGE] = {
                "name": "dead_letter",
                "title": "Dead letter",
                "summary": "A message that failed for good: its original bytes and headers, "
                "plus headers saying what failed.",
                "contentType": "application/octet-stream",
                "headers": {"$ref": "#/components/schemas/DeadLetterHeaders"},
                "payload": {
                    "description": "The failed message's original bytes, unchanged (usually a "
                    "Dispytch envelope; undecodable input is kept as it was)."
                },
            }

        channel_messages: dict[str, dict[str, str]] = {}
        for spec, msg in zip(self.handlers, self.handler_messages, strict=True):
            channel_messages.setdefault(spec.topic, {})[msg.key] = msg.key
        for cls, msg in zip(self.published, self.published_messages, strict=True):
            channel_messages.setdefault(cls.__topic__, {})[msg.key] = msg.key

        channels: dict[str, Any] = {}
        for ch in self.channels.values():
            obj: dict[str, Any] = {"address": ch.address}
            if ch.dead_letters_of is not None:
                obj["title"] = f"Dead letters of {ch.dead_letters_of}"
                obj["messages"] = {
                    _DEAD_LETTER_MESSAGE: {"$ref": f"#/components/messages/{_DEAD_LETTER_MESSAGE}"}
                }
            else:
                obj["title"] = ch.address
                sources = "; ".join(dict.fromkeys(ch.sources))
                obj["summary"] = sources[:1].upper() + sources[1:] + "."
                obj["messages"] = {
                    key: {"$ref": f"#/components/messages/{key}"}
                    for key in channel_messages.get(ch.address, {})
                }
            if ch.parameters:
                obj["parameters"] = ch.parameters
            bindings = self.channel_bindings(ch)
            if bindings:
                obj["bindings"] = bindings
            channels[ch.id] = obj
        doc["channels"] = channels
        doc["operations"] = self.operations()
        components: dict[str, Any] = {}
        schemas = dict(self.schemas.components)
        if _DEAD_LETTER_MESSAGE in messages:
            schemas["DeadLetterHeaders"] = DEAD_LETTER_HEADERS
        if schemas:
            components["schemas"] = schemas
        if messages:
            components["messages"] = messages
        if components:
            doc["components"] = components
        doc["x-dispytch-listener"] = {
            "group": app.group,
            "concurrency": app.concurrency,
            "ordering": app.ordering,
            "shutdownTimeout": app.shutdown_timeout,
            "maxDeliveries": app.max_deliveries,
            "topicDelimiter": app.topic_delimiter,
        }
        return doc

    def channel_bindings(self, ch: _Channel) -> dict[str, Any]:
        if ch.dead_letters_of is None:
            return self.transport.channel_bindings
        dl = self.transport.dead_letter_bindings
        if self.transport.protocol.startswith("amqp") and dl:
            return {
                "amqp": {
                    "is": "queue",
                    "queue": {
                        "name": ch.address,
                        "durable": True,
                        "exclusive": False,
                        "autoDelete": False,
                        "vhost": dl["vhost"],
                    },
                    "bindingVersion": "0.3.0",
                }
            }
        return self.transport.channel_bindings

    @staticmethod
    def operation(
        action: str,
        ch: _Channel,
        message_key: str,
        title: str,
        summary: str | None,
        bindings: dict[str, Any],
    ) -> dict[str, Any]:
        op: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{ch.id}"},
            "messages": [{"$ref": f"#/channels/{ch.id}/messages/{message_key}"}],
            "title": title,
        }
        if summary:
            op["summary"] = summary
        if bindings:
            op["bindings"] = bindings
        return op

    def operations(self) -> dict[str, Any]:
        ops: dict[str, Any] = {}
        receive = self.transport.receive_bindings
        for spec, msg in zip(self.handlers, self.handler_messages, strict=True):
            ch = self.channels[spec.topic]
            op = self.operation("receive", ch, msg.key, spec.name, _summary(spec.func), receive)
            policy = spec.retry
            op["x-dispytch-handler"] = f"{spec.func.__module__}.{spec.name}"
            op["x-dispytch-retry"] = {
                "retries": policy.retries,
                "retryOn": [kind.__name__ for kind in policy.retry_on],
                "interval": policy.interval,
                "backoff": policy.backoff,
                "maxInterval": policy.max_interval,
                "jitter": policy.jitter,
            }
            op["x-dispytch-ordering"] = self.app.ordering
            op["x-dispytch-dead-letter-channel"] = self.channels[
                self.transport.dead_letter_address(spec.topic)
            ].id
            ops[_unique(_ident("on_" + spec.func.__name__), ops)] = op
        send = self.transport.send_bindings
        for cls, msg in zip(self.published, self.published_messages, strict=True):
            ch = self.channels[cls.__topic__]
            title = f"emit {cls.__name__}"
            op = self.operation("send", ch, msg.key, title, _summary(cls), send)
            ops[_unique(_ident("emit_" + cls.__name__), ops)] = op
        for ch in self.channels.values():
            if ch.dead_letters_of is None:
                continue
            ops[_unique(_ident("dead_letter_" + ch.id), ops)] = self.operation(
                "send",
                ch,
                _DEAD_LETTER_MESSAGE,
                f"dead-letter {ch.dead_letters_of}",
                "After the last attempt, or when a message cannot be decoded or validated, its "
                "original bytes go here; then it is acknowledged.",
                {},
            )
        return ops


def asyncapi(
    app: App,
    *,
    title: str | None = None,
    version: str = "1.0.0",
    description: str | None = None,
) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``app``, as a JSON-ready dict.

    ``title`` defaults to the app's group. Emitted events appear once declared with
    :meth:`App.publishes`. Nothing is connected; the broker URL's credentials are left out.
    """
    builder = _Builder(app, transport_for(app.backend, app.group))
    return builder.build(title or app.group, version, description)
