"""Backends built from a broker URL, for :class:`~dispytch.app.App`.

A backend owns the clients it builds: one producer, and one consumer per listener group
(:class:`~dispytch.seam.Backend`, re-exported here). Backends are found by URL scheme and
imported only when used, so ``import dispytch`` needs no broker client installed.
"""

from __future__ import annotations

import importlib
from typing import Any

from dispytch.errors import ConfigurationError
from dispytch.redaction import redact, redact_url, secrets_of
from dispytch.seam import Backend

__all__ = ["Backend", "backend_from_url", "redact_url", "register_backend"]

#: scheme -> "module:attribute"; modules are imported on first use.
_BACKENDS: dict[str, str] = {
    "memory": "dispytch.memory:MemoryBackend",
    "kafka": "dispytch.kafka:KafkaBackend",
    "amqp": "dispytch.rabbitmq:RabbitMQBackend",
    "amqps": "dispytch.rabbitmq:RabbitMQBackend",
    "redis": "dispytch.redis:RedisBackend",
    "rediss": "dispytch.redis:RedisBackend",
    "redis+streams": "dispytch.redis.streams:RedisStreamsBackend",
    "rediss+streams": "dispytch.redis.streams:RedisStreamsBackend",
    "nats": "dispytch.nats:NATSBackend",
    "tls": "dispytch.nats:NATSBackend",
    "nats+tls": "dispytch.nats:NATSBackend",
    "nats+core": "dispytch.nats.core:NATSCoreBackend",
    "nats+core+tls": "dispytch.nats.core:NATSCoreBackend",
    "kafka+ssl": "dispytch.kafka:KafkaBackend",
}


def register_backend(scheme: str, target: str) -> None:
    """Make ``scheme://`` URLs build the backend at ``"module:Class"``."""
    _BACKENDS[scheme] = target


def backend_from_url(url: str, **options: Any) -> Backend:
    """Build the backend for ``url`` (``kafka://``, ``amqp://``, ``redis://``, ``memory://``...)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    target = _BACKENDS.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(_BACKENDS))
        raise ConfigurationError(
            f"unknown broker URL {redact(url, secrets_of(url, options))!r}; use one of: {known}"
        )
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    cls: type[Backend] = getattr(module, attr)
    return cls(url, **options)
