"""What both modes' backends share: the Redis client built from the URL, the connect check,
closing, and reading dead letters back."""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from redis.asyncio import Redis
from redis.exceptions import AuthenticationError, AuthenticationWrongNumberOfArgsError

from dispytch.backend import Backend
from dispytch.dead_letter import DeadLetter
from dispytch.emitter.producer import Producer
from dispytch.errors import ConfigurationError, ConnectError
from dispytch.redis._compat import ContextTLSConnection, tls_context_supported
from dispytch.redis.dead_letters import read_dead_letters
from dispytch.redis.dlq import RedisDeadLetters
from dispytch.redis.sentinel import sentinel_target
from dispytch.security import ConnectionSecurity, connection_security
from dispytch.topic_rules import REDIS

__all__ = ["RedisBackendBase", "RedisUnavailableError", "client_url"]

ProducerT = TypeVar("ProducerT", bound=Producer)

# The mode is in the scheme for Dispytch only; redis-py knows the plain ones.
_SCHEMES = {"redis+streams": "redis", "rediss+streams": "rediss"}


class RedisUnavailableError(ConnectError):
    """Redis did not answer when the backend connected."""


def client_url(url: str) -> str:
    """The ``redis://`` URL redis-py understands for a ``redis+streams://`` one."""
    scheme, sep, rest = url.partition("://")
    return f"{_SCHEMES.get(scheme.lower(), scheme)}{sep}{rest}"


class RedisBackendBase(Backend, Generic[ProducerT]):
    """A backend owning one Redis client for emits and dead letters, one producer, and the
    consumers it built (each with a client of its own)."""

    topic_delimiter = ":"
    topic_rules = REDIS
    security: ConnectionSecurity
    #: Raised by :meth:`connect` when Redis does not answer.
    unavailable_error: ClassVar[type[RedisUnavailableError]] = RedisUnavailableError

    def __init__(
        self,
        url: str,
        *,
        publish_timeout: float | None,
        sentinel_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        self.security = connection_security(
            "Redis",
            url,
            options,
            tls_schemes={"rediss": "redis", "rediss+streams": "redis+streams"},
            credential_options=("password",),
            client_loggers=("redis.asyncio.connection", "redis.asyncio.client"),
        )
        super().__init__(url, security=self.security, **options)
        self.publish_timeout = publish_timeout
        # rediss:// whenever TLS is on; the context is Dispytch's unless only redis-py's own
        # ssl_* options were given.
        self._client_url = client_url(self.security.url)
        self._tls: dict[str, Any] = {}
        if self.security.tls:
            self._client_url = "rediss://" + self._client_url.partition("://")[2]
            native = any(name.startswith("ssl_") for name in options)
            if self.security.tls_options or not native:
                if not tls_context_supported():
                    raise ConfigurationError(
                        f"{self.security.safe_url}: this redis-py cannot use an ssl.SSLContext "
                        "for its connections (verified with redis-py 5 to 8.2); give redis-py's "
                        "own ssl_* options (ssl_ca_certs, ssl_certfile, ssl_keyfile) instead"
                    )
                self._tls = {
                    "connection_class": ContextTLSConnection,
                    "tls_context": self.security.ssl_context,
                }
        self.options.setdefault("socket_connect_timeout", self.security.connect_timeout)
        #: Set when the URL names Sentinels (``?sentinel=<master>``): clients go to the master.
        self.sentinel = sentinel_target(
            client_url(self.security.url), self.security.safe_url, sentinel_options
        )
        if self.sentinel is not None and self.security.tls:
            raise ConfigurationError(
                f"{self.security.safe_url}: TLS to Redis behind Sentinel is not supported yet; "
                "use a plain redis:// Sentinel URL inside a trusted network, or no Sentinel"
            )
        self._client: Redis | None = None
        self._producer: ProducerT | None = None

    def _build(self, **overrides: Any) -> Redis:
        """A new client for the URL; ``overrides`` win over the backend's options."""
        if self.sentinel is not None:
            return self.sentinel.client(**{**self.options, **overrides})
        try:
            return Redis.from_url(self._client_url, **{**self.options, **self._tls, **overrides})
        except (ValueError, TypeError) as exc:
            # redis-py's messages may quote the URL; say it again without the password.
            scheme = self.url.partition("://")[0] or "redis"
            raise ConfigurationError(
                f"cannot build a Redis client from {self.security.safe_url!r}: "
                f"{type(exc).__name__}; use {scheme}://[:password@]host:port/db and options that "
                "redis.asyncio.Redis.from_url accepts"
            ) from None

    @property
    def client(self) -> Redis:
        """The client used for emits and dead letters (built on first use)."""
        if self._client is None:
            self._client = self._build()
        return self._client

    async def open_connections(self) -> None:
        """Check that Redis answers (within ``connect_timeout``), so a wrong URL, password or
        TLS setting fails at start, not at the first emit."""
        try:
            await self.security.connect(
                self.client.ping,
                hint="check the URL, that Redis runs there, the ACL user and password, and the "
                "TLS settings (rediss:// for a TLS port)",
                auth_errors=(AuthenticationError, AuthenticationWrongNumberOfArgsError),
            )
        except ConnectError as exc:
            raise self.unavailable_error(str(exc)) from None

    def producer(self) -> ProducerT:
        if self._producer is None:
            self._producer = self._new_producer()
        return self._producer

    def _new_producer(self) -> ProducerT:
        raise NotImplementedError

    async def close_connections(self) -> None:
        if self._producer is not None:
            await self._producer.close()
            self._producer = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self.sentinel is not None:
            await self.sentinel.aclose()

    async def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        """Read (without removing) up to ``limit`` dead letters of ``topic`` from ``topic.dlq``."""
        return await read_dead_letters(self.client, topic, limit)

    #: Whether replays are safe (a stream keeps them; Pub/Sub does not).
    replayable: ClassVar[bool] = True

    def dead_letter_store(self, group: str | None = None) -> RedisDeadLetters:
        """The dead letters of every ``{topic}.dlq`` stream and of the fallback stream of
        ``group`` (of every group when ``None``)."""
        return RedisDeadLetters(self.client, self.producer(), group, replayable=self.replayable)
