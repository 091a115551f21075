"""How a backend secures and opens its connections: TLS options, credentials, connect timeout.

Every backend takes the same TLS options, as keyword arguments of ``App``/the backend or as
query parameters of the URL (all but ``ssl_context``)::

    ssl_context    an ssl.SSLContext you built (wins over the file options)
    ssl_cafile     CA certificates (PEM) to trust instead of the system's
    ssl_certfile   client certificate (PEM) for mutual TLS, with
    ssl_keyfile    its private key, and
    ssl_password   the key's password
    connect_timeout  seconds the first connection may take (default 4.5: a broker that does not
                   answer is reported within 5 seconds)

TLS is on when the URL's scheme says so (``kafka+ssl://``, ``amqps://``, ``rediss://``,
``rediss+streams://``, ``tls://``, ``nats+tls://``, ``nats+core+tls://``) or when any TLS
option is given. Once on, it is never dropped: a server that does not do TLS is refused, the
server's certificate is verified (host name included) and credentials are sent only inside
TLS. Credentials over a plaintext connection log one warning per process and URL.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode

from dispytch.errors import ConfigurationError, ConnectError, DispytchError
from dispytch.redaction import guard_loggers, redact, secrets_of

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "TLS_OPTIONS",
    "ConnectionSecurity",
    "connection_security",
]

logger = logging.getLogger("dispytch.security")

T = TypeVar("T")

#: Seconds the first connection to a broker may take before :class:`ConnectError`: a broker
#: that does not answer at all is reported within 5 seconds of the start.
DEFAULT_CONNECT_TIMEOUT = 4.5
#: The TLS options every backend takes (keyword arguments; all but ssl_context also in the URL).
TLS_OPTIONS = ("ssl_context", "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
_FILE_OPTIONS = TLS_OPTIONS[1:]

_warned: set[str] = set()


@dataclass(frozen=True, slots=True)
class ConnectionSecurity:
    """What a backend needs to open its connections safely.

    Attributes:
        broker: the broker's name, for messages (``"Kafka"``).
        url: the URL for the client, without Dispytch's query options.
        safe_url: the URL as shown in logs and errors (secrets redacted).
        tls: whether TLS was asked for (scheme or options).
        ssl_context: the context to use when ``tls`` (built from the options if not given).
        tls_options: whether any TLS option was given (else the context is the default one).
        credentials: whether a password, token or key is configured.
        connect_timeout: seconds the first connection may take.
        secrets: secret values to redact from any text shown.
        client_loggers: loggers of the broker client that may write the secrets.
    """

    broker: str
    url: str
    safe_url: str
    tls: bool
    ssl_context: ssl.SSLContext | None
    tls_options: bool
    credentials: bool
    connect_timeout: float
    secrets: frozenset[str]
    client_loggers: tuple[str, ...] = ()

    def redact(self, text: str) -> str:
        """``text`` without this connection's secrets (and any URL's)."""
        return redact(text, self.secrets)

    def before_connect(self) -> None:
        """Keep the secrets out of the client's logs; warn (once per process and URL) when
        credentials go over a plaintext connection."""
        guard_loggers(self.client_loggers, self.secrets)
        if self.credentials and not self.tls and self.safe_url not in _warned:
            _warned.add(self.safe_url)
            logger.warning(
                "credentials for %s at %s are sent over a plaintext connection: anyone on the "
                "network path can read them; use TLS (see the Security section of the README)",
                self.broker,
                self.safe_url,
            )

    def failure(self, exc: BaseException, hint: str, auth_errors: tuple[type, ...] = ()) -> str:
        """One line on why connecting failed, secrets redacted."""
        cause = describe_failure(exc, auth_errors, self.connect_timeout)
        if self.tls and isinstance(
            exc, ConnectionResetError | ConnectionAbortedError | asyncio.IncompleteReadError
        ):
            cause += " during the TLS handshake: the server may not speak TLS on this port"
        elif self.tls and isinstance(exc, TimeoutError):
            cause += " (a plaintext port never answers a TLS handshake)"
        return self.redact(f"cannot connect to {self.broker} at {self.safe_url}: {cause}; {hint}")

    async def connect(
        self,
        opening: Callable[[], Awaitable[T]],
        *,
        hint: str,
        auth_errors: tuple[type, ...] = (),
        cause: Callable[[BaseException], BaseException] | None = None,
    ) -> T:
        """Await ``opening()`` within ``connect_timeout``; any failure but Dispytch's own errors
        becomes one :class:`ConnectError` naming the broker (redacted) and the cause
        (``cause(exc)`` when the client's exception only says that it failed)."""
        # The client's own warnings and errors while connecting are held back: on failure the
        # ConnectError says it in one line; on success (a retry worked) they are logged.
        held = _HeldRecords()
        loggers = [logging.getLogger(name) for name in self.client_loggers]
        for log in loggers:
            log.addFilter(held)
        try:
            async with asyncio.timeout(self.connect_timeout):
                result = await opening()
        except DispytchError:
            raise
        except Exception as exc:
            real = cause(exc) if cause is not None else exc
            held.replay(as_debug=True)  # the ConnectError says it; details for DEBUG logs
            raise ConnectError(self.failure(real, hint, auth_errors)) from None
        finally:
            for log in loggers:
                log.removeFilter(held)
        held.replay()
        return result


class _HeldRecords(logging.Filter):
    """Holds a client's warnings and errors back while a connection is opened."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = True
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if self.holding and record.levelno >= logging.WARNING:
            self.records.append(record)
            return False
        return True

    def replay(self, *, as_debug: bool = False) -> None:
        """Log the held records (lowered to DEBUG: they explain a failure already reported)."""
        self.holding = False
        records, self.records = self.records, []
        for record in records:
            log = logging.getLogger(record.name)
            if as_debug:
                record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            if log.isEnabledFor(record.levelno):
                log.handle(record)


def describe_failure(exc: BaseException, auth_errors: tuple[type, ...], timeout: float) -> str:
    """The cause of a failed connection, in words (not redacted)."""
    if isinstance(exc, TimeoutError) and not str(exc):
        return f"no answer within {timeout:g}s (connect_timeout)"
    if auth_errors and isinstance(exc, auth_errors):
        return f"authentication failed ({type(exc).__name__}: {exc})"
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # the TLS error may be a cause
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return (
                f"the server's TLS certificate is not trusted ({current.verify_message}); "
                "trust its CA with ssl_cafile=... or ssl_context=..."
            )
        if isinstance(current, ssl.SSLError):
            return (
                f"the TLS handshake failed ({current.reason or current}): is this a TLS port, "
                "and does the server take this client's TLS settings?"
            )
        current = current.__cause__ or current.__context__
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def connection_security(
    broker: str,
    url: str,
    options: dict[str, Any],
    *,
    tls_schemes: Mapping[str, str],
    credential_options: tuple[str, ...] = (),
    client_loggers: tuple[str, ...] = (),
) -> ConnectionSecurity:
    """Take the TLS options and ``connect_timeout`` out of ``options`` (the dict is changed)
    and out of the URL's query, and decide whether TLS is on.

    ``tls_schemes`` maps each TLS scheme to the plaintext scheme the client understands
    (``{"rediss": "redis"}``); the returned URL keeps the scheme as given.
    """
    secrets = secrets_of(url, options)
    scheme, sep, rest = url.partition("://")
    base, q, query = rest.partition("?")
    from_query: dict[str, str] = {}
    if q and any(f"{name}=" in query for name in (*_FILE_OPTIONS, "connect_timeout")):
        query, hashmark, fragment = query.partition("#")
        kept = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name in _FILE_OPTIONS or name == "connect_timeout":
                from_query[name] = value
            else:
                kept.append((name, value))
        query = urlencode(kept)
        url = f"{scheme}{sep}{base}" + (f"?{query}" if query else "") + hashmark + fragment
    settings = {**from_query}
    for name in (*TLS_OPTIONS, "connect_timeout"):
        if name in options:
            settings[name] = options.pop(name)
    timeout = _timeout(settings.pop("connect_timeout", DEFAULT_CONNECT_TIMEOUT))
    tls_options = any(v is not None for v in settings.values())
    tls = scheme.lower() in tls_schemes or tls_options
    context = _ssl_context(settings) if tls else None
    userinfo = base.split("/", 1)[0].rpartition("@")[0]
    credentials = bool(unquote(userinfo).strip(":")) or any(
        options.get(name) for name in credential_options
    )
    return ConnectionSecurity(
        broker=broker,
        url=url,
        safe_url=redact(url),
        tls=tls,
        ssl_context=context,
        tls_options=tls_options,
        credentials=credentials,
        connect_timeout=timeout,
        secrets=secrets,
        client_loggers=client_loggers,
    )


def _timeout(value: Any) -> float:
    try:
        timeout = float(value)
    except (TypeError, ValueError):
        timeout = -1.0
    if not timeout > 0:
        raise ConfigurationError(f"connect_timeout must be a number of seconds > 0, got {value!r}")
    return timeout


def _ssl_context(settings: dict[str, Any]) -> ssl.SSLContext:
    context = settings.get("ssl_context")
    files = {name: settings.get(name) for name in _FILE_OPTIONS if settings.get(name)}
    if context is not None:
        if not isinstance(context, ssl.SSLContext):
            raise ConfigurationError(
                f"ssl_context must be an ssl.SSLContext, got {type(context).__name__}"
            )
        if files:
            raise ConfigurationError(
                f"pass either ssl_context or {', '.join(files)}, not both: load the files into "
                "your context (context.load_verify_locations / load_cert_chain)"
            )
        return context
    try:
        context = ssl.create_default_context(cafile=files.get("ssl_cafile"))
        certfile = files.get("ssl_certfile")
        if certfile:
            context.load_cert_chain(certfile, files.get("ssl_keyfile"), files.get("ssl_password"))
        elif files.get("ssl_keyfile"):
            raise ConfigurationError("ssl_keyfile needs ssl_certfile (the client certificate)")
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"cannot load the TLS files ({type(exc).__name__}: {exc}); check ssl_cafile, "
            "ssl_certfile, ssl_keyfile and ssl_password"
        ) from None
    return context
