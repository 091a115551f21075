"""How each backend reads TLS and credentials from its URL and options (no broker needed)."""

from __future__ import annotations

import logging
import ssl
import uuid

import pytest

from dispytch.errors import ConfigurationError
from dispytch.security import DEFAULT_CONNECT_TIMEOUT, connection_security


def _security(url: str, **options: object):  # type: ignore[no-untyped-def]
    return connection_security("X", url, dict(options), tls_schemes={"xs": "x"})


def test_tls_from_the_scheme_or_from_any_tls_option() -> None:
    assert not _security("x://h").tls
    assert _security("xs://h").tls
    assert _security("x://h", ssl_context=ssl.create_default_context()).tls
    assert _security("x://h?ssl_cafile=" + ssl.get_default_verify_paths().openssl_cafile).tls


def test_dispytch_options_leave_the_url_and_the_options() -> None:
    options = {"connect_timeout": 2, "heartbeat": 3}
    security = connection_security(
        "X", "x://u:p@h/v?connect_timeout=1&heartbeat=30", options, tls_schemes={}
    )
    assert security.url == "x://u:p@h/v?heartbeat=30"
    assert options == {"heartbeat": 3}
    assert security.connect_timeout == 2.0  # the option wins over the query
    assert _security("x://h").connect_timeout == DEFAULT_CONNECT_TIMEOUT


def test_a_given_context_is_used_as_is_and_not_mixed_with_files() -> None:
    context = ssl.create_default_context()
    assert _security("xs://h", ssl_context=context).ssl_context is context
    with pytest.raises(ConfigurationError, match="either ssl_context or ssl_cafile"):
        _security("xs://h", ssl_context=context, ssl_cafile="/ca.pem")
    with pytest.raises(ConfigurationError, match="cannot load the TLS files"):
        _security("xs://h", ssl_cafile="/nonexistent/ca.pem")
    with pytest.raises(ConfigurationError, match="connect_timeout"):
        _security("x://h", connect_timeout=0)


def test_the_default_context_verifies_the_server() -> None:
    context = _security("xs://h").ssl_context
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_credentials_over_plaintext_warn_once_without_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"x://u:pw-{uuid.uuid4().hex}@h"
    for _ in range(3):
        _security(url).before_connect()
    _security("xs://u:pw@h").before_connect()  # TLS: no warning
    _security("x://h").before_connect()  # no credentials: no warning
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "pw-" not in caplog.text


# -- Kafka ----------------------------------------------------------------------------------


def _kafka(url: str, **options: object) -> dict[str, object]:
    from dispytch.kafka import KafkaBackend

    return KafkaBackend(url, **options).producer_options  # type: ignore[arg-type]


def test_kafka_security_protocol_follows_the_url() -> None:
    assert _kafka("kafka://h:9092")["security_protocol"] == "PLAINTEXT"
    assert _kafka("kafka+ssl://h:9093")["security_protocol"] == "SSL"
    sasl = _kafka("kafka+ssl://u:p%40ss@h:9093?sasl_mechanism=scram-sha-512")
    assert sasl["security_protocol"] == "SASL_SSL"
    assert sasl["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (sasl["sasl_plain_username"], sasl["sasl_plain_password"]) == ("u", "p@ss")
    assert isinstance(sasl["ssl_context"], ssl.SSLContext)
    assert _kafka("kafka://u:p@h")["security_protocol"] == "SASL_PLAINTEXT"
    assert (
        _kafka("kafka://h", ssl_context=ssl.create_default_context())["security_protocol"] == "SSL"
    )


def test_kafka_refuses_what_would_downgrade_or_be_ignored() -> None:
    with pytest.raises(ConfigurationError, match="contradicts"):
        _kafka("kafka+ssl://u:p@h", security_protocol="SASL_PLAINTEXT")
    with pytest.raises(ConfigurationError, match="unknown query parameter 'security_protocol'"):
        _kafka("kafka://h?security_protocol=SSL")
    with pytest.raises(ConfigurationError, match="sasl_mechanism"):
        _kafka("kafka+ssl://u:p@h?sasl_mechanism=GSSAPI")


# -- RabbitMQ, Redis, NATS ------------------------------------------------------------------


def test_rabbitmq_tls_option_switches_to_amqps_with_the_context() -> None:
    from dispytch.rabbitmq import RabbitMQBackend

    context = ssl.create_default_context()
    backend = RabbitMQBackend("amqp://u:p@h:5671/v?heartbeat=30", ssl_context=context)
    assert backend._client_url == "amqps://u:p@h:5671/v?heartbeat=30"
    assert backend.connect_options["ssl_context"] is context
    plain = RabbitMQBackend("amqp://u:p@h/")
    assert "ssl_context" not in plain.connect_options
    native = RabbitMQBackend("amqps://u:p@h/?cafile=/ca.pem")
    assert "ssl_context" not in native.connect_options  # aio-pika's own URL options still work


def test_redis_uses_any_context_through_its_tls_connection() -> None:
    from dispytch.redis import RedisBackend
    from dispytch.redis._compat import ContextTLSConnection

    context = ssl.create_default_context()
    backend = RedisBackend("redis://u:p@h:6379/0", ssl_context=context)
    pool = backend.client.connection_pool
    assert pool.connection_class is ContextTLSConnection
    connection = pool.make_connection()
    assert connection._connection_arguments()["ssl"] is context
    assert RedisBackend("redis://h/0").client.connection_pool.connection_class.__name__ == (
        "Connection"
    )


def test_nats_tls_option_and_server_lists() -> None:
    from dispytch.nats import NATSBackend
    from dispytch.nats.backend import _servers

    context = ssl.create_default_context()
    backend = NATSBackend("nats://h:4222", tls=context)
    assert backend.security.tls and backend.security.ssl_context is context
    assert _servers("tls://a@h1:4222,nats+tls://b:c@h2:4222") == [
        "nats://a@h1:4222",
        "nats://b:c@h2:4222",
    ]
    assert NATSBackend("nats+tls://h").security.tls
