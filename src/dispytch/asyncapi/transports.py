"""What an AsyncAPI document says about each broker: servers, bindings, dead-letter addresses.

Everything protocol-specific in the generator lives here, keyed by the broker URL's scheme, so
the document builder stays the same for every backend. Pure: reads the backend's URL and a few
of its settings, opens nothing. Credentials and query strings never reach the document.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from dispytch.backend import Backend
from dispytch.dead_letter import dead_letter_topic

__all__ = ["Transport", "transport_for"]

# Binding versions the AsyncAPI 3.0 schema knows (@asyncapi/specs 6.x).
_KAFKA = "0.5.0"
_AMQP = "0.3.0"
_NATS = "0.1.0"


@dataclass(slots=True)
class Transport:
    """The protocol facts of one backend, as AsyncAPI objects."""

    protocol: str
    name: str  # server name
    description: str
    hosts: list[str]
    pathname: str | None = None
    protocol_version: str | None = None
    server_bindings: dict[str, Any] = field(default_factory=dict)
    channel_bindings: dict[str, Any] = field(default_factory=dict)
    send_bindings: dict[str, Any] = field(default_factory=dict)
    receive_bindings: dict[str, Any] = field(default_factory=dict)
    dead_letter_prefix: str = ""  # NATS: the dead-letter stream's subject prefix
    dead_letter_bindings: dict[str, Any] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)

    def dead_letter_address(self, topic: str) -> str:
        if self.dead_letter_prefix:
            return f"{self.dead_letter_prefix}.{topic}"
        return dead_letter_topic(topic)

    def servers(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for index, host in enumerate(self.hosts, start=1):
            server: dict[str, Any] = {"host": host, "protocol": self.protocol}
            if self.protocol_version:
                server["protocolVersion"] = self.protocol_version
            if self.pathname:
                server["pathname"] = self.pathname
            server["description"] = self.description
            if self.server_bindings:
                server["bindings"] = self.server_bindings
            server.update(self.extensions)
            out[self.name if index == 1 else f"{self.name}-{index}"] = server
        return out


def _split(url: str) -> tuple[str, list[str], str]:
    """``scheme, [host:port...], path`` of a broker URL, without user info or query."""
    scheme, _, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    netloc = netloc.rpartition("@")[2]  # drop user:password
    path = (slash + path).split("?", 1)[0].split("#", 1)[0]
    hosts = [h for h in netloc.split(",") if h]
    return scheme.lower(), hosts, path


def transport_for(backend: Backend, group: str) -> Transport:
    """The transport facts of ``backend`` for an app in consumer group ``group``."""
    scheme, hosts, path = _split(backend.url)
    # Built from host and path only: user info and query (where secrets live) never appear.
    shown = f"{scheme}://{','.join(hosts)}{path}"
    if scheme == "kafka":
        return Transport(
            "kafka",
            "kafka",
            f"Kafka cluster ({', '.join(hosts) or 'no host'}).",
            hosts or ["localhost:9092"],
            server_bindings={"kafka": {"bindingVersion": _KAFKA}},
            channel_bindings={"kafka": {"bindingVersion": _KAFKA}},
            send_bindings={"kafka": {"bindingVersion": _KAFKA}},
            receive_bindings={
                "kafka": {
                    "groupId": {"type": "string", "enum": [group]},
                    "bindingVersion": _KAFKA,
                }
            },
        )
    if scheme in ("amqp", "amqps"):
        vhost = unquote(path[1:]) if len(path) > 1 else "/"
        exchange = str(getattr(backend, "exchange_name", "dispytch"))
        dlx = str(getattr(backend, "dead_letter_exchange", "dispytch.dlq"))
        queue_type = str(getattr(backend, "queue_type", "quorum"))
        return Transport(
            scheme,
            "rabbitmq",
            f"RabbitMQ ({shown}); events are published to the topic exchange {exchange!r}.",
            hosts or ["localhost:5672"],
            pathname=path or "/",
            protocol_version="0.9.1",
            channel_bindings={
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": exchange,
                        "type": "topic",
                        "durable": True,
                        "autoDelete": False,
                        "vhost": vhost,
                    },
                    "bindingVersion": _AMQP,
                }
            },
            send_bindings={"amqp": {"deliveryMode": 2, "mandatory": True, "bindingVersion": _AMQP}},
            receive_bindings={"amqp": {"ack": True, "bindingVersion": _AMQP}},
            dead_letter_bindings={"exchange": dlx, "vhost": vhost},
            extensions={"x-dispytch-queue-type": queue_type},
        )
    if scheme in ("redis", "rediss", "redis+streams", "rediss+streams"):
        streams = scheme.endswith("+streams")
        return Transport(
            "rediss" if scheme.startswith("rediss") else "redis",
            "redis",
            (
                "Redis Streams: each topic is a stream, each app group a consumer group "
                "(at-least-once)."
                if streams
                else "Redis Pub/Sub: at-most-once, Redis keeps nothing for absent subscribers."
            ),
            hosts or ["localhost:6379"],
            pathname=path or None,
            extensions={"x-dispytch-mode": "streams" if streams else "pubsub"},
        )
    if scheme in ("nats", "nats+core"):
        core = scheme == "nats+core"
        dls = str(getattr(backend, "dead_letter_stream", "dispytch_dlq"))
        receive = {"nats": {"queue": group[:255], "bindingVersion": _NATS}} if core else {}
        return Transport(
            "nats",
            "nats",
            (
                "core NATS: at-most-once; each app group is a queue group."
                if core
                else "NATS JetStream: durable pull consumer per app group (at-least-once)."
            ),
            hosts or ["localhost:4222"],
            receive_bindings=receive,
            dead_letter_prefix=dls,
            extensions={
                "x-dispytch-mode": "core" if core else "jetstream",
                **(
                    {}
                    if core
                    else {"x-dispytch-stream": str(getattr(backend, "stream", "dispytch"))}
                ),
            },
        )
    if scheme == "memory":
        return Transport(
            "memory",
            "memory",
            "In-process broker (development and tests).",
            [hosts[0] if hosts else "localhost"],
        )
    name = scheme or "broker"
    return Transport(name, name, f"Broker at {shown}.", hosts or ["localhost"])
