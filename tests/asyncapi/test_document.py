"""The AsyncAPI document of an App: pure checks (no broker, no Node)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import pytest
import yaml
from pydantic import BaseModel

from dispytch import App, Event, EventBase, RegistrationError, TopicSegment
from dispytch.asyncapi import asyncapi, dump_yaml
from dispytch.seam import DEAD_LETTER_REASONS
from tests.asyncapi.everything import OrderPlaced, build

URLS = {
    "memory": "memory://everything",
    "kafka": "kafka://alice:kafka-s3cret@k1:9092,k2:9093",
    "rabbitmq": "amqp://bob:amqp-s3cret@rabbit:5672/shop",
    "redis": "redis://:redis-s3cret@cache:6379/0",
    "redis_streams": "redis+streams://carol:streams-s3cret@cache:6379/2?socket_timeout=5",
    "nats": "nats://dave:nats-s3cret@nats:4222",
    "nats_core": "nats+core://nats:4222",
}

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", params=sorted(URLS))
def doc(request: pytest.FixtureRequest) -> dict:
    return asyncapi(build(URLS[request.param]))


def _deref(doc: dict, ref: str) -> dict:
    node = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def test_no_secret_reaches_the_document(doc: dict) -> None:
    text = json.dumps(doc)
    assert "s3cret" not in text
    for user in ("alice", "bob", "carol", "dave", "socket_timeout"):
        assert user not in text


def test_servers_carry_host_protocol_and_bindings() -> None:
    kafka = asyncapi(build(URLS["kafka"]))["servers"]
    assert {name: s["host"] for name, s in kafka.items()} == {
        "kafka": "k1:9092",
        "kafka-2": "k2:9093",
    }
    assert kafka["kafka"]["protocol"] == "kafka"
    assert kafka["kafka"]["bindings"] == {"kafka": {"bindingVersion": "0.5.0"}}
    amqp = asyncapi(build(URLS["rabbitmq"]))
    assert amqp["servers"]["rabbitmq"] | {"description": ""} == {
        "host": "rabbit:5672",
        "protocol": "amqp",
        "protocolVersion": "0.9.1",
        "pathname": "/shop",
        "description": "",
        "x-dispytch-queue-type": "quorum",
    }
    users = amqp["channels"]["users"]["bindings"]["amqp"]
    assert users["exchange"] | {} == {
        "name": "dispytch",
        "type": "topic",
        "durable": True,
        "autoDelete": False,
        "vhost": "shop",
    }
    streams = asyncapi(build(URLS["redis_streams"]))["servers"]["redis"]
    assert (streams["protocol"], streams["pathname"], streams["x-dispytch-mode"]) == (
        "redis",
        "/2",
        "streams",
    )
    core = asyncapi(build(URLS["nats_core"]))
    assert core["operations"]["on_welcome"]["bindings"] == {
        "nats": {"queue": "billing", "bindingVersion": "0.1.0"}
    }
    kafka_receive = asyncapi(build(URLS["kafka"]))["operations"]["on_welcome"]["bindings"]
    assert kafka_receive["kafka"]["groupId"] == {"type": "string", "enum": ["billing"]}


def test_one_channel_per_pattern_and_event_class_with_typed_parameters(doc: dict) -> None:
    channels = {c["address"]: c for c in doc["channels"].values()}
    assert {"users", "shop:{shop_id}:orders", "audit:{region}"} <= set(channels)
    shop = channels["shop:{shop_id}:orders"]["parameters"]["shop_id"]
    # The handler's TopicSegment(gt=0, le=9999) wins over the event field's plain int.
    assert shop["x-dispytch-schema"] == {"type": "integer", "exclusiveMinimum": 0, "maximum": 9999}
    assert shop["description"] == "Topic segment {shop_id}: integer, > 0, <= 9999."
    assert shop["location"] == "$message.payload#/body/shop_id"
    region = channels["audit:{region}"]["parameters"]["region"]
    assert region["enum"] == ["eu", "us"]
    assert "parameters" not in channels["users"]


def test_every_address_placeholder_is_a_declared_parameter(doc: dict) -> None:
    for channel in doc["channels"].values():
        names = set(re.findall(r"\{([^}]+)\}", channel["address"]))
        assert names == set(channel.get("parameters", {})), channel["address"]


def test_handler_only_placeholder_is_a_string_parameter() -> None:
    app = App("memory://")

    @app.handler(topic="tenant:{tenant}:jobs", event="job")
    async def job(event: Event) -> None: ...

    params = asyncapi(app)["channels"]["tenant_tenant_jobs"]["parameters"]
    assert params == {
        "tenant": {
            "description": "Topic segment {tenant}: string.",
            "x-dispytch-schema": {"type": "string"},
        }
    }


def test_messages_are_envelopes_around_the_body_schema(doc: dict) -> None:
    messages = doc["components"]["messages"]
    welcome = messages["user_registered"]
    payload = welcome["payload"]
    assert payload["required"] == ["id", "type", "body", "timestamp"]
    assert payload["properties"]["type"]["const"] == "user_registered"
    assert payload["properties"]["timestamp"]["type"] == "integer"
    body = _deref(doc, payload["properties"]["body"]["$ref"])
    # The envelope carries the id; the body of an EventBase has every other field.
    assert list(body["properties"]) == ["user_id", "email", "plan", "address", "tags"]
    assert body["properties"]["user_id"]["exclusiveMinimum"] == 0
    assert welcome["summary"] == "A user signed up."
    assert messages["user_deleted"]["payload"]["properties"]["body"]["type"] == "object"
    # One event type with two body schemas: two messages, both on the channel.
    shop = doc["channels"]["shop_shop_id_orders"]["messages"]
    assert set(shop) == {"order_placed-OrderBody", "order_placed-OrderPlaced"}
    schemas = doc["components"]["schemas"]
    order = schemas["OrderPlaced"]["properties"]
    assert order["payment"]["discriminator"] == "kind"  # AsyncAPI: a property name
    assert order["lines"]["items"]["items"] == [{"type": "string"}, {"type": "integer"}]
    assert schemas["Address"]["properties"]["zip_code"]["pattern"] == "^[0-9]{5}$"
    assert schemas["Plan"]["enum"] == ["free", "pro"]


def test_operations_receive_per_handler_send_per_published_class(doc: dict) -> None:
    ops = doc["operations"]
    receive = {k for k, v in ops.items() if v["action"] == "receive"}
    send = {k for k, v in ops.items() if v["action"] == "send" and k.startswith("emit_")}
    assert receive == {"on_welcome", "on_forget", "on_charge", "on_record", "on_audit"}
    assert send == {"emit_UserRegistered", "emit_OrderPlaced", "emit_Audit"}
    for op in ops.values():
        channel = _deref(doc, op["channel"]["$ref"])
        for ref in op["messages"]:
            assert _deref(doc, ref["$ref"]) in channel["messages"].values()
    welcome = ops["on_welcome"]
    assert welcome["summary"] == "Send the welcome mail."
    assert welcome["x-dispytch-handler"] == "tests.asyncapi.everything.welcome"
    assert welcome["x-dispytch-retry"] == {
        "retries": 3,
        "retryOn": ["ConnectionError", "TimeoutError"],
        "interval": 0.5,
        "backoff": "exponential",
        "maxInterval": 10,
        "jitter": 0.2,
    }
    assert welcome["x-dispytch-ordering"] == "partition"
    assert doc["x-dispytch-listener"]["concurrency"] == 32


@pytest.mark.parametrize(
    ("backend", "address"),
    [
        ("kafka", "shop:{shop_id}:orders.dlq"),
        ("rabbitmq", "shop:{shop_id}:orders.dlq"),
        ("redis_streams", "shop:{shop_id}:orders.dlq"),
        ("nats", "dispytch_dlq.shop:{shop_id}:orders"),
    ],
)
def test_dead_letter_channels(backend: str, address: str) -> None:
    doc = asyncapi(build(URLS[backend]))
    dead = {c["address"]: (k, c) for k, c in doc["channels"].items()}[address]
    channel_id, channel = dead
    assert channel["title"] == "Dead letters of shop:{shop_id}:orders"
    assert set(channel["parameters"]) == {"shop_id"}
    assert "location" not in channel["parameters"]["shop_id"]
    assert doc["operations"]["on_charge"]["x-dispytch-dead-letter-channel"] == channel_id
    message = doc["components"]["messages"]["DeadLetter"]
    headers = _deref(doc, message["headers"]["$ref"])
    assert headers["properties"]["x-dispytch-reason"]["enum"] == list(DEAD_LETTER_REASONS)
    if backend == "rabbitmq":
        assert channel["bindings"]["amqp"]["is"] == "queue"
        assert channel["bindings"]["amqp"]["queue"]["name"] == address


def test_publishes_checks_its_arguments() -> None:
    app = App("memory://")
    with pytest.raises(RegistrationError, match="EventBase subclasses"):
        app.publishes(dict)  # type: ignore[arg-type]

    class NoTopic(EventBase):
        __event_type__ = "x"

    with pytest.raises(RegistrationError, match="__topic__"):
        app.publishes(NoTopic)
    app.publishes(OrderPlaced, OrderPlaced)
    assert app.published == [OrderPlaced]


def test_yaml_loads_back_to_the_same_document(doc: dict) -> None:
    assert yaml.safe_load(dump_yaml(doc)) == doc


@pytest.mark.parametrize(
    "value",
    [
        "",
        "true",
        "No",
        "null",
        "~",
        "1.5",
        "0x1F",
        "- x",
        "a: b",
        "#c",
        "x #y",
        " lead",
        "tail ",
        "@at",
        "`tick",
        "multi\nline",
        "tab\there",
        'quote"s',
        "back\\slash",
        "é",
        "\u2028",
        "{a}",
        "[b]",
        "*star",
        "&amp",
        "!tag",
        "%pct",
        "a,b",
        "?",
        "-",
        "---",
        "...",
    ],
)
def test_yaml_scalars_round_trip(value: str) -> None:
    data = {value: [value, {"k": value}], "n": [1, -2.5, None, True, [], {}]}
    assert yaml.safe_load(dump_yaml(data)) == data


def test_cli_docs_gen_writes_json_and_yaml(tmp_path: Path) -> None:
    env_path = f"{ROOT / 'src'}"
    for fmt in ("json", "yaml"):
        out = tmp_path / f"asyncapi.{fmt}"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "dispytch",
                "docs",
                "gen",
                "tests.asyncapi.everything:app",
                "--format",
                fmt,
                "--out",
                str(out),
                "--title",
                "Billing",
                "--version",
                "2.1.0",
            ],
            cwd=ROOT,
            check=True,
            timeout=60,
            env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        )
        text = out.read_text()
        loaded = json.loads(text) if fmt == "json" else yaml.safe_load(text)
        assert loaded["info"] == {"title": "Billing", "version": "2.1.0"}
        assert loaded == asyncapi(build(), title="Billing", version="2.1.0")


def test_cli_docs_gen_reports_a_bad_target() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dispytch", "docs", "gen", "no_such_module:app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "cannot import 'no_such_module'" in result.stderr


class Tier(Enum):
    GOLD = "gold"
    SILVER = "silver"


class Body(BaseModel):
    x: int


def test_segment_schema_with_definitions_is_inlined() -> None:
    app = App("memory://")

    @app.handler(topic="tier:{tier}:events", event="e")
    async def on_tier(event: Event[Body], tier: Annotated[Tier | None, TopicSegment()]) -> None: ...

    param = asyncapi(app)["channels"]["tier_tier_events"]["parameters"]["tier"]
    text = json.dumps(param)
    assert "$defs" not in text and "$ref" not in text
    assert {"enum": ["gold", "silver"], "title": "Tier", "type": "string"} in param[
        "x-dispytch-schema"
    ]["anyOf"]
