"""``nats://`` URLs: the backend that builds and owns a NATS connection for an App."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from typing import Any, Literal
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATSClient
from nats.js import JetStreamContext

from dispytch.backend import Backend
from dispytch.dead_letter import DeadLetter
from dispytch.errors import ConfigurationError
from dispytch.hosts import parse_hosts
from dispytch.listener.consumer import Consumer
from dispytch.nats._compat import GUARDED, TLSGuardClient, TLSRequiredError, harden, probe_tls
from dispytch.nats.consumer import NATSGroupConsumer
from dispytch.nats.dead_letters import (
    DEFAULT_DEAD_LETTER_STREAM,
    DeadLetterStore,
    read_dead_letters,
)
from dispytch.nats.dlq import NATSDeadLetters
from dispytch.nats.producer import NATSProducer
from dispytch.nats.replies import NATSInbox
from dispytch.nats.streams import add_subjects
from dispytch.poison import Overflow
from dispytch.redaction import redact
from dispytch.request import ReplyInbox
from dispytch.security import ConnectionSecurity, connection_security
from dispytch.topic_rules import NATS

__all__ = ["NATSBackend", "connect_nats", "nats_security", "stream_replicas"]

logger = logging.getLogger("dispytch.nats")

DeliverPolicyName = Literal["all", "new"]

_WEEK = 7 * 24 * 3600.0

DEFAULT_PORT = 4222
#: Streams the backend creates get ``min(3, servers in the cluster)`` replicas by default.
MAX_DEFAULT_REPLICAS = 3


class NATSBackend(Backend):
    """NATS JetStream from a URL: ``App("nats://[user:pass@]host:4222", group="billing")``.

    An event's topic is its NATS subject; topic segments are separated by ``.``, so a handler
    for ``user.{id}.events`` consumes ``user.*.events``.

    What it creates on the server (all idempotent, safe with many processes):

    * **The event stream** ``stream`` (default ``"dispytch"``, file storage, messages kept
      ``max_age`` = 7 days, ``min(3, servers)`` replicas unless ``stream_options`` says
      otherwise: R3 on a cluster of three or more, R1 on a single server; the servers are
      those of the URL plus those the cluster advertises). Its subjects grow as
      needed: when a group starts, every handler subject is added to it, unless another stream
      already captures that subject (then the consumer is created on that stream: streams you
      manage yourself keep working). Subjects that overlap are merged into one wildcard
      (``a.b.*`` + ``a.*.c`` -> ``a.*.*``), as JetStream refuses overlapping subjects.
      Subjects are never removed.
    * **Emits to a subject no stream captures raise** :class:`~dispytch.errors.EmitError`
      (no PubAck); nothing is added implicitly, as a dynamic topic would add one subject per
      value. Start the consuming app first (its subjects persist in the stream), or list the
      subjects an emit-only app publishes to with ``subjects=["orders.>"]``: they are added
      on :meth:`connect`.
    * **Per group and handler subject, a durable pull consumer** named after both (``.``,
      ``*`` and ``>`` replaced, plus a hash), filtering that subject, with explicit acks. A
      new group reads the subject's whole history (``deliver_policy="all"``, like Kafka's
      ``earliest``); ``"new"`` starts at the end. A message not acked within ``ack_wait``
      seconds (its process died) is redelivered; JetStream counts deliveries and the
      listener dead-letters a message delivered more than ``max_deliveries`` times, so
      ``max_deliver`` is unlimited by default. ``max_ack_pending`` bounds unacked messages
      of the whole group (all its processes): default ``max(1000, 4 * concurrency)``.
      Consumers outlive the process; pass ``inactive_threshold`` (seconds) to let JetStream
      delete one unused that long.
    * **Dead letters** go to stream ``dead_letter_stream`` (default ``"dispytch_dlq"``,
      subjects ``dispytch_dlq.>``), under ``dispytch_dlq.{topic}``: a separate namespace,
      because a subject lives in one stream only and ``orders.dlq`` would be consumed by a
      handler for ``orders.{kind}``. :meth:`dead_letters` reads them back.

    Emits return after the stream's PubAck. A handler's message is acked (``+ACK``) only
    after it was handled or dead-lettered; a shutdown hands unfinished ones back (``-NAK``).
    The connection reconnects forever by itself (``reconnect_time_wait`` seconds apart);
    fetch loops resume once it is back, and one line is logged per disconnect and reconnect.

    Security: ``tls://`` or ``nats+tls://`` asks for TLS (so does any TLS option of
    :mod:`dispytch.security`, or nats-py's ``tls=`` context); the server must require TLS and
    its certificate is verified. Credentials are sent only inside TLS then: a server that does
    not upgrade the connection is refused before ``CONNECT`` (every reconnect included).
    Credentials: ``user:password@`` or a token as the whole userinfo (``tls://TOKEN@host``),
    or nats-py's options ``user_credentials="user.creds"`` / ``nkeys_seed="user.nk"``.

    Args:
        url: ``nats://[user:password@|token@]host:port``; ``tls://`` / ``nats+tls://`` for TLS;
            a cluster as ``nats://h1:4222,h2:4222,h3:4222`` (or
            ``nats://h1:4222,nats://h2:4222``): nats-py moves to another server when one
            fails and learns the cluster's other servers from the one it reaches.
        stream: name of the event stream the backend manages.
        subjects: subjects (wildcards allowed) added to ``stream`` on :meth:`connect`.
        stream_options: ``StreamConfig`` fields (nats-py names) used when the stream is
            created, e.g. ``{"max_age": 86400, "max_bytes": 10**9, "num_replicas": 3}``.
            ``num_replicas`` defaults to ``min(3, servers)`` for both streams; a stream that
            already exists keeps its own.
        dead_letter_stream: name of the dead-letter stream (and its subject prefix).
        dead_letter_stream_options: ``StreamConfig`` fields for the dead-letter stream.
        ack_wait: seconds JetStream waits for an ack before redelivering.
        max_ack_pending: unacked messages allowed per group consumer.
        max_deliver: JetStream's delivery limit (``None``: unlimited).
        deliver_policy: ``"all"`` or ``"new"``, for consumers created from now on.
        inactive_threshold: seconds after which JetStream deletes an unused group consumer.
        fetch_timeout: seconds one fetch waits; stopping may take this long.
        publish_timeout: seconds to wait for a PubAck.
        connect_timeout: seconds the first connection may take (default 4.5).
        **connect_options: passed to ``nats.connect`` under nats-py's names (``name``,
            ``tls``, ``user_credentials``, ``reconnect_time_wait``, ``ping_interval``...).
    """

    topic_delimiter = "."
    topic_rules = NATS
    security: ConnectionSecurity

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        stream: str = "dispytch",
        subjects: list[str] | tuple[str, ...] = (),
        stream_options: dict[str, Any] | None = None,
        dead_letter_stream: str = DEFAULT_DEAD_LETTER_STREAM,
        dead_letter_stream_options: dict[str, Any] | None = None,
        ack_wait: float = 30.0,
        max_ack_pending: int | None = None,
        max_deliver: int | None = None,
        deliver_policy: DeliverPolicyName = "all",
        inactive_threshold: float | None = None,
        fetch_timeout: float = 1.0,
        publish_timeout: float = 10.0,
        **connect_options: Any,
    ) -> None:
        self.security = nats_security(url, connect_options)
        super().__init__(url, security=self.security, **connect_options)
        if deliver_policy not in ("all", "new"):
            raise ConfigurationError(
                f"deliver_policy must be 'all' or 'new', got {deliver_policy!r}"
            )
        if ack_wait <= 0:
            raise ConfigurationError(f"ack_wait must be > 0 seconds, got {ack_wait}")
        for name, value in (("stream", stream), ("dead_letter_stream", dead_letter_stream)):
            if not value or any(c in value for c in ".*> \t"):
                raise ConfigurationError(
                    f"{name}={value!r} is not a valid JetStream stream name: use letters, "
                    "digits, '_' and '-'"
                )
        self.stream = stream
        self.subjects = list(subjects)
        self.stream_options: dict[str, Any] = {"max_age": _WEEK}
        self.stream_options.update(stream_options or {})
        self.dead_letter_stream = dead_letter_stream
        self.dead_letter_stream_options = dict(dead_letter_stream_options or {})
        self.ack_wait = ack_wait
        self.max_ack_pending = max_ack_pending
        self.max_deliver = max_deliver
        self.deliver_policy = deliver_policy
        self.inactive_threshold = inactive_threshold
        self.fetch_timeout = fetch_timeout
        self.publish_timeout = publish_timeout
        self.connect_timeout = self.security.connect_timeout
        self.connect_options = connect_options
        self.connection: NATSClient | None = None
        self.jetstream: JetStreamContext | None = None
        self._producer: NATSProducer | None = None
        self._dead_letters: DeadLetterStore | None = None

    async def open_connections(self) -> None:
        """Connect, check JetStream is on, create the dead-letter stream, add ``subjects``."""
        connection = await connect_nats(self.security, self.connect_options)
        try:
            replicas = stream_replicas(connection)
            self.stream_options.setdefault("num_replicas", replicas)
            self.dead_letter_stream_options.setdefault("num_replicas", replicas)
            js = connection.jetstream(timeout=self.publish_timeout)
            try:
                await js.account_info()
            except (
                nats.errors.NoRespondersError,
                nats.errors.TimeoutError,
                nats.js.errors.ServiceUnavailableError,
            ) as exc:
                raise ConfigurationError(
                    f"the NATS server at {self.security.safe_url} does not answer JetStream "
                    f"requests ({type(exc).__name__}); start nats-server with JetStream "
                    "enabled (nats-server -js) or enable it for this account"
                ) from None
            store = DeadLetterStore(
                js,
                self.dead_letter_stream,
                stream_options=self.dead_letter_stream_options,
                timeout=self.publish_timeout,
                connection=connection,
            )
            await store.ensure()
            if self.subjects:
                await add_subjects(js, self.stream, self.subjects, self.stream_options)
        except BaseException:
            await connection.close()
            raise
        self.connection = connection
        self.jetstream = js
        # Imported here: dispytch.nats.core imports this module.
        from dispytch.nats.core.producer import NATSCoreProducer

        self._producer = NATSProducer(
            js,
            timeout=self.publish_timeout,
            replies=NATSCoreProducer(connection, timeout=self.publish_timeout),
            connection=connection,
        )
        self._dead_letters = store

    def producer(self) -> NATSProducer:
        return self.require(self._producer)

    def make_consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> Consumer:
        """The consumer of ``group``: durable pull consumers, ``prefetch`` messages (and
        ``max_buffer_bytes`` payload bytes, 64 MiB when ``None``) ahead."""
        if not group:
            raise ConfigurationError("a NATS consumer group needs a name (it names the consumers)")
        js, dead_letters = self.require(self.jetstream), self.require(self._dead_letters)
        return NATSGroupConsumer(
            js,
            group=group,
            stream=self.stream,
            stream_options=self.stream_options,
            consumer_options={
                "ack_wait": self.ack_wait,
                "max_ack_pending": self.max_ack_pending or max(1000, 4 * prefetch),
                "max_deliver": self.max_deliver,
                "deliver_policy": self.deliver_policy,
                "inactive_threshold": self.inactive_threshold,
            },
            prefetch=prefetch,
            fetch_timeout=self.fetch_timeout,
            dead_letters=dead_letters,
            max_buffer_bytes=max_buffer_bytes,
            connection=self.connection,
        )

    def reply_inbox(self, group: str) -> ReplyInbox:
        """A core subscription on ``_INBOX.<random>`` (see
        :class:`~dispytch.nats.replies.NATSInbox`)."""
        return NATSInbox(self.require(self.connection))

    async def close_connections(self) -> None:
        if self._producer is not None:
            await self._producer.close()
        connection, self.connection = self.connection, None
        self.jetstream = None
        self._producer = self._dead_letters = None
        if connection is not None and not connection.is_closed:
            # close() flushes what is buffered first: the last acks reach the server.
            await connection.close()

    def dead_letter_store(self, group: str | None = None) -> NATSDeadLetters:
        """The dead letters in ``dead_letter_stream``, with the fallback subject of ``group``
        (of every group when ``None``)."""
        return NATSDeadLetters(
            self.require(self.jetstream),
            self.producer(),
            self.dead_letter_stream,
            self.dead_letter_stream,
            group,
        )

    async def dead_letters(self, topic: str, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters of ``topic``, oldest first, without removing them.

        Works before :meth:`connect` and after :meth:`close` too, on a short-lived connection.
        """
        prefix = self.dead_letter_stream
        if self.jetstream is not None:
            return await read_dead_letters(
                self.jetstream, self.dead_letter_stream, prefix, topic, limit
            )
        connection = await connect_nats(self.security, self.connect_options)
        try:
            return await read_dead_letters(
                connection.jetstream(timeout=self.publish_timeout),
                self.dead_letter_stream,
                prefix,
                topic,
                limit,
            )
        finally:
            await connection.close()


#: Schemes of NATS URLs that ask for TLS, and the plain ones (``nats+core`` for core NATS).
TLS_SCHEMES = {"tls": "nats", "nats+tls": "nats", "nats+core+tls": "nats+core"}
#: Options that carry a password or token (a warning when sent without TLS).
_CREDENTIAL_OPTIONS = ("password", "token")


def nats_security(url: str, options: dict[str, Any]) -> ConnectionSecurity:
    """The connection security of a NATS URL and options (nats-py's ``tls=`` counts as
    ``ssl_context``); the TLS and timeout options are taken out of ``options``."""
    if "tls" in options and "ssl_context" not in options:
        options["ssl_context"] = options.pop("tls")
    return connection_security(
        "NATS",
        url,
        options,
        tls_schemes=TLS_SCHEMES,
        credential_options=_CREDENTIAL_OPTIONS,
        client_loggers=("nats.aio.client",),
    )


def _servers(url: str) -> list[str]:
    """The ``nats://`` server URLs nats-py takes, for one URL or several joined by commas
    (``nats://h1:4222,nats://h2:4222``), each naming one host or several
    (``nats://h1:4222,h2:4222``)."""
    parts = re.split(r",(?=[A-Za-z][A-Za-z0-9+.\-]*://)", url)
    servers = []
    for part in parts:
        one = "nats://" + part.split("://", 1)[-1]
        hosts = parse_hosts(one, DEFAULT_PORT, shown=redact(one))
        servers += [hosts.url_for(i) for i in range(len(hosts.hosts))]
    return servers


class _AuthRefused(Exception):
    """The server refused the credentials (``-ERR 'Authorization Violation'``)."""


def _fatal(exc: BaseException) -> BaseException | None:
    """The error to report at once, for errors retrying cannot fix (credentials, TLS)."""
    if isinstance(exc, TLSRequiredError | ssl.SSLError):
        return exc
    text = str(exc).lower()
    if "authorization violation" in text or "authentication" in text:
        return _AuthRefused(str(exc).removeprefix("nats: "))
    return None


async def connect_nats(
    security: ConnectionSecurity, options: dict[str, Any], *, overflow: Overflow | None = None
) -> NATSClient:
    """Connect within ``security.connect_timeout``, then reconnect forever by itself.

    A refused password or token, an untrusted certificate or a server without TLS (when TLS
    was asked for) fails at once; an unreachable server after the timeout. Either way one
    :class:`~dispytch.errors.ConnectError` names the URL (redacted) and the cause.

    Messages nats-py drops for a slow subscription are reported to ``overflow``; the client is
    hardened against input it cannot decode (see ``_compat``).
    """
    safe_url = security.safe_url
    loop = asyncio.get_running_loop()
    fatal: asyncio.Future[BaseException] = loop.create_future()
    last_error: list[BaseException] = []
    client = TLSGuardClient()
    client.require_tls = security.tls
    servers = _servers(security.url)

    async def on_error(exc: Exception) -> None:
        if overflow is not None and isinstance(exc, nats.errors.SlowConsumerError):
            sub = exc.sub
            overflow.drop(sub.pending_msgs if sub else 0, sub.pending_bytes if sub else 0)
            return
        last_error.append(exc)
        logger.debug(
            "NATS connection error at %s: %s",
            safe_url,
            security.redact(f"{type(exc).__name__}: {exc}"),
        )
        # Credentials and TLS errors end the first connection at once; others once every
        # server was tried (nats-py would go on trying until the timeout).
        stop = _fatal(exc) or (exc if len(last_error) >= len(servers) else None)
        if stop is not None and not fatal.done() and not client.is_connected:
            fatal.set_result(stop)

    async def on_disconnect() -> None:
        # nats-py calls this on close() too: only a lost connection is worth a warning.
        if client.is_closed:
            return
        logger.warning("disconnected from NATS at %s; reconnecting", safe_url)

    async def on_reconnect() -> None:
        logger.info("reconnected to NATS at %s", safe_url)

    settings: dict[str, Any] = {
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 1,
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
    }
    if security.tls:
        settings["tls"] = security.ssl_context
    settings.update(options)

    async def opening() -> NATSClient:
        if security.tls and not GUARDED:
            await _probe_each(servers, security.connect_timeout)
        connecting: asyncio.Future[None] = asyncio.ensure_future(
            client.connect(servers, **settings)
        )
        waiters: set[asyncio.Future[Any]] = {connecting, fatal}
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not connecting.done():
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
        if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
            return client
        raise fatal.result() if fatal.done() else connecting.exception() or TimeoutError()

    def cause(exc: BaseException) -> BaseException:
        # After the timeout, say why the attempts failed (connection refused...).
        return last_error[-1] if isinstance(exc, TimeoutError) and last_error else exc

    try:
        connected = await security.connect(
            opening,
            hint="check that nats-server runs there, the URL's user and password (or token), "
            "and the TLS settings (tls:// or nats+tls:// for a TLS server)",
            auth_errors=(_AuthRefused,),
            cause=cause,
        )
        return harden(connected)
    except BaseException:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 1.0)
        raise


async def _probe_each(servers: list[str], timeout: float) -> None:
    """Fallback of the TLS guard for nats-py versions without the hook (see ``_compat``)."""
    for server in servers:
        parts = urlsplit(server)
        if not await probe_tls(parts.hostname or "127.0.0.1", parts.port or 4222, timeout):
            raise TLSRequiredError()


def stream_replicas(client: NATSClient) -> int:
    """How many replicas a stream gets unless its options say: ``min(3, servers)``, the servers
    being those the client knows (its URL's, plus those a clustered server advertised)."""
    servers = {server.netloc.rpartition("@")[2] for server in client.servers}
    return max(1, min(MAX_DEFAULT_REPLICAS, len(servers)))
