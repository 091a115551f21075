"""KafkaBackend URL and option handling, and record keys: no broker."""

from __future__ import annotations

import pytest

pytest.importorskip("aiokafka")

from dispytch import App
from dispytch.errors import ConfigurationError
from dispytch.kafka import KafkaBackend, KafkaEventConfig
from dispytch.kafka.producer import record_key


def test_url_lists_brokers_and_defaults_the_port() -> None:
    backend = KafkaBackend("kafka://a:9093,b")
    assert backend.servers == ["a:9093", "b:9092"]
    assert backend.topic_delimiter == "."


def test_url_credentials_turn_on_sasl_and_are_not_shown() -> None:
    backend = KafkaBackend("kafka://svc:s3cret@broker:9092")
    assert backend.servers == ["broker:9092"]
    assert backend.producer_options["sasl_plain_password"] == "s3cret"
    assert backend.consumer_options["security_protocol"] == "SASL_PLAINTEXT"
    assert "s3cret" not in repr(backend)


def test_safe_defaults_and_option_routing() -> None:
    backend = KafkaBackend(
        "kafka://h:9092",
        client_id="svc",
        session_timeout_ms=20_000,
        linger_ms=5,
        producer_options={"acks": 1},
    )
    consumer, producer = backend.consumer_options, backend.producer_options
    assert consumer["enable_auto_commit"] is False
    assert consumer["auto_offset_reset"] == "earliest"
    assert consumer["session_timeout_ms"] == 20_000
    assert "linger_ms" not in consumer
    assert producer["enable_idempotence"] is True
    assert producer["acks"] == 1  # an explicit producer option wins
    assert producer["linger_ms"] == 5
    assert "session_timeout_ms" not in producer
    assert consumer["client_id"] == producer["client_id"] == "svc"


def test_unknown_option_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigurationError, match="consumer_options"):
        KafkaBackend("kafka://h:9092", sesion_timeout_ms=1)


def test_app_builds_the_kafka_backend_from_the_url() -> None:
    app = App("kafka://h:9092", group="billing")
    assert isinstance(app.backend, KafkaBackend)
    assert app.topic_delimiter == "."


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), (b"\x00k", b"\x00k"), ("kéy", "kéy".encode()), (42, b"42")],
)
def test_partition_key_becomes_record_key(value: object, expected: bytes | None) -> None:
    assert record_key(value) == expected
    assert KafkaEventConfig(partition_key=value).partition_key == value
