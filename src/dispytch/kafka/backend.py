"""``kafka://`` URLs: builds and owns aiokafka clients with safe defaults."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError, SaslAuthenticationFailed, UnsupportedSaslMechanismError

from dispytch.backend import Backend
from dispytch.dead_letter import DeadLetter
from dispytch.errors import ConfigurationError, ConnectError
from dispytch.kafka.consumer import KafkaConsumer
from dispytch.kafka.dead_letters import KafkaDeadLetters, read_dead_letters
from dispytch.kafka.dlq import KafkaDeadLetterStore
from dispytch.kafka.producer import DEFAULT_METADATA_TIMEOUT, KafkaProducer
from dispytch.kafka.replication import TopicSettings, create_topics
from dispytch.kafka.replies import KafkaInbox
from dispytch.kafka.topics import dead_letter_topic, fallback_topic
from dispytch.request import ReplyInbox
from dispytch.security import ConnectionSecurity, connection_security
from dispytch.topic_rules import KAFKA

#: The producer's ``max_batch_size`` unless given: below the broker's default message.max.bytes.
DEFAULT_MAX_BATCH_SIZE = 512 * 1024

__all__ = ["KafkaBackend"]

_CONSUMER_PARAMS = frozenset(inspect.signature(AIOKafkaConsumer).parameters) - {"topics", "loop"}
_PRODUCER_PARAMS = frozenset(inspect.signature(AIOKafkaProducer).parameters) - {"loop"}

#: How often a consumer refreshes metadata: bounds how long a new topic that matches a
#: ``{segment}`` pattern goes unnoticed (aiokafka's default is 5 minutes).
DEFAULT_METADATA_MAX_AGE_MS = 3000


#: SASL mechanisms a URL may name with ``?sasl_mechanism=`` (others through options).
_URL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


def _bootstrap(url: str, safe_url: str) -> tuple[list[str], str | None, str | None, str | None]:
    """``kafka[+ssl]://[user:password@]host[:port][,host2[:port]][?sasl_mechanism=...]`` ->
    servers, user, password and SASL mechanism."""
    rest = url.split("://", 1)[1] if "://" in url else url
    netloc, _, query = rest.partition("?")
    netloc = netloc.split("/", 1)[0]
    userinfo, at, hosts = netloc.rpartition("@")
    servers = []
    for host in hosts.split(","):
        host = host.strip()
        if host:
            servers.append(host if ":" in host.rsplit("]", 1)[-1] else f"{host}:9092")
    if not servers:
        raise ConfigurationError(
            f"Kafka URL {safe_url!r} names no broker; use kafka://host:9092[,host2:9092]"
        )
    mechanism = None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name != "sasl_mechanism":
            raise ConfigurationError(
                f"Kafka URL {safe_url!r}: unknown query parameter {name!r}; a Kafka URL takes "
                "sasl_mechanism and the TLS options (ssl_cafile, ssl_certfile, ssl_keyfile, "
                "ssl_password); pass other client options as keyword arguments"
            )
        mechanism = value.upper()
        if mechanism not in _URL_MECHANISMS:
            raise ConfigurationError(
                f"Kafka URL {safe_url!r}: sasl_mechanism={value!r}; use one of "
                f"{', '.join(_URL_MECHANISMS)} (others, like OAUTHBEARER, as options)"
            )
    user = password = None
    if at:
        name, _, secret = userinfo.partition(":")
        user, password = unquote(name), unquote(secret)
    return servers, user, password, mechanism


def _security_options(
    security: ConnectionSecurity,
    user: str | None,
    password: str | None,
    mechanism: str | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    """aiokafka's security options from the URL and the options: the protocol follows from
    TLS (scheme or TLS options) and credentials (URL or ``sasl_*`` options)."""
    sasl = (
        bool(user)
        or bool(options.get("sasl_plain_username"))
        or (options.get("sasl_mechanism") not in (None, "PLAIN"))
    )
    protocol = ("SASL_" if sasl else "") + ("SSL" if security.tls else "PLAINTEXT")
    given = options.get("security_protocol")
    if given is not None and given != protocol:
        raise ConfigurationError(
            f"security_protocol={given!r} contradicts {security.safe_url!r} (which means "
            f"{protocol!r}); drop the option: kafka+ssl:// (or a TLS option) turns on TLS, "
            "user:password@ or sasl_* options turn on SASL"
        )
    out: dict[str, Any] = {"security_protocol": protocol}
    if sasl:
        out["sasl_mechanism"] = mechanism or options.get("sasl_mechanism") or "PLAIN"
    if user:
        out["sasl_plain_username"] = user
        out["sasl_plain_password"] = password
    if security.tls:
        out["ssl_context"] = security.ssl_context
    return out


class KafkaBackend(Backend):
    """Kafka through aiokafka: ``App("kafka://host:9092,host2:9092", group="billing")``.

    Security, from the URL (see :mod:`dispytch.security` for the TLS options):

    * ``kafka://host:9092``: PLAINTEXT;
    * ``kafka+ssl://host:9093``: TLS (``SSL``), the server's certificate verified;
    * ``kafka+ssl://user:password@host:9093?sasl_mechanism=SCRAM-SHA-512``: SASL over TLS
      (``SASL_SSL``); ``sasl_mechanism`` is ``PLAIN`` (default), ``SCRAM-SHA-256`` or
      ``SCRAM-SHA-512``;
    * ``kafka://user:password@host:9092``: SASL over plaintext (``SASL_PLAINTEXT``), with a
      warning: the credentials and events travel unencrypted.

    A ``security_protocol`` option that contradicts the URL is an error, never a downgrade.

    Options:
        consumer_options: keyword arguments for every ``AIOKafkaConsumer`` (they win).
        producer_options: keyword arguments for the ``AIOKafkaProducer`` (they win).
        commit_interval, commit_every, revoke_timeout: see :class:`KafkaConsumer`.
        metadata_timeout: seconds an emit (or a dead letter) waits for a topic the client has
            no metadata for before failing with "topic does not exist" (default 5).
        transactional_id: turns on exactly-once consume-transform-produce: the events handlers
            return are published in one Kafka transaction with the offsets of the records
            that produced them (see :class:`KafkaConsumer`); the app's consumer reads with
            ``isolation_level="read_committed"``. Unique per process, and the same for a
            process and its restart (the restart fences the old one's open transaction).
            Emits, replies and dead letters stay outside transactions.
        replication_factor: replicas of the topics the backend creates (default
            ``min(3, brokers)``).
        topic_partitions: partitions of the topics the backend creates (default: the
            broker's ``num.partitions``).
        topic_config: topic configs of the topics the backend creates (default
            ``{"min.insync.replicas": "2"}`` for three replicas or more, else none).
        any other keyword: passed to each aiokafka client whose constructor takes it, e.g.
            ``client_id``, ``request_timeout_ms``, ``security_protocol`` go to both,
            ``session_timeout_ms`` to consumers only, ``linger_ms`` to the producer only.
            A keyword neither takes is an error.

    Defaults, chosen so nothing is lost: consumers use the app's group as ``group_id``,
    ``enable_auto_commit=False`` (the listener commits what it settled),
    ``auto_offset_reset="earliest"`` and ``metadata_max_age_ms=3000`` (new topics matching a
    pattern are found within seconds); the producer uses ``enable_idempotence=True`` and
    ``acks="all"``. Literal handler topics are created before the consumer starts,
    replicated as the cluster allows (see :mod:`dispytch.kafka.replication`). Name a
    cluster's brokers as ``kafka://host1:9092,host2:9092,host3:9092`` (any one of them is
    enough to start). Topic segments are separated by ``.``: Kafka topic names
    cannot contain ``:``. Dead letters go to ``{topic}.dlq`` (a hashed name when that would be
    longer than Kafka allows), or, when that topic cannot be written, to the group's fallback
    topic ``dispytch.dlq.{group}``; see :mod:`dispytch.kafka.dead_letters`.
    """

    topic_delimiter = "."
    topic_rules = KAFKA
    security: ConnectionSecurity

    def __init__(
        self,
        url: str = "kafka://localhost:9092",
        *,
        consumer_options: dict[str, Any] | None = None,
        producer_options: dict[str, Any] | None = None,
        commit_interval: float = 0.1,
        commit_every: int = 500,
        revoke_timeout: float = 10.0,
        metadata_timeout: float = DEFAULT_METADATA_TIMEOUT,
        transactional_id: str | None = None,
        replication_factor: int | None = None,
        topic_partitions: int | None = None,
        topic_config: dict[str, str | int] | None = None,
        **options: Any,
    ) -> None:
        self.security = connection_security(
            "Kafka",
            url,
            options,
            tls_schemes={"kafka+ssl": "kafka"},
            credential_options=("sasl_plain_password", "sasl_oauth_token_provider"),
            client_loggers=("aiokafka", "aiokafka.conn", "aiokafka.client"),
        )
        super().__init__(url, security=self.security, **options)
        self.servers, user, password, mechanism = _bootstrap(
            self.security.url, self.security.safe_url
        )
        auth = _security_options(self.security, user, password, mechanism, options)
        unknown = sorted(set(options) - _CONSUMER_PARAMS - _PRODUCER_PARAMS)
        if unknown:
            raise ConfigurationError(
                f"unknown Kafka option(s) {', '.join(unknown)}: pass aiokafka client options "
                "by their aiokafka names, or inside consumer_options={...} / producer_options"
            )
        shared = {**auth, **options}
        self.consumer_options: dict[str, Any] = {
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "metadata_max_age_ms": DEFAULT_METADATA_MAX_AGE_MS,
            **{k: v for k, v in shared.items() if k in _CONSUMER_PARAMS},
            **(consumer_options or {}),
        }
        self.producer_options: dict[str, Any] = {
            "enable_idempotence": True,
            "acks": "all",
            # emit_many frames one record batch per partition: room for a few thousand events
            # per request (aiokafka's default, 16 KiB, holds about 70).
            "max_batch_size": DEFAULT_MAX_BATCH_SIZE,
            **{k: v for k, v in shared.items() if k in _PRODUCER_PARAMS},
            **(producer_options or {}),
        }
        if transactional_id is not None and (
            not isinstance(transactional_id, str) or not transactional_id
        ):
            raise ConfigurationError(
                f"transactional_id must be a non-empty string, got {transactional_id!r}"
            )
        self.transactional_id = transactional_id
        if transactional_id is not None:
            self.consumer_options.setdefault("isolation_level", "read_committed")
        self.commit_interval = commit_interval
        self.commit_every = commit_every
        self.revoke_timeout = revoke_timeout
        self.metadata_timeout = metadata_timeout
        self.topics = TopicSettings(replication_factor, topic_partitions, topic_config)
        self._producer: KafkaProducer | None = None

    async def open_connections(self) -> None:
        """Start the producer (the first emit does not pay for the connection): within
        ``connect_timeout``, or :class:`~dispytch.errors.ConnectError`."""
        producer = self.producer()
        # aiokafka logs why each bootstrap server failed and raises "Unable to bootstrap":
        # the logged error is the cause worth one line; the log lines themselves are dropped.
        bootstrap = _BootstrapErrors(self.servers)
        client_log = logging.getLogger("aiokafka")
        client_log.addFilter(bootstrap)
        try:
            await self.security.connect(
                producer.start,
                hint="check the address, that Kafka runs there, the URL's credentials and "
                "sasl_mechanism, and the TLS settings (kafka+ssl:// for a TLS listener)",
                auth_errors=(SaslAuthenticationFailed, UnsupportedSaslMechanismError),
                cause=bootstrap.cause,
            )
        except ConnectError:
            self._producer = None
            await _stop_quietly(producer.producer)
            raise
        finally:
            client_log.removeFilter(bootstrap)

    def producer(self) -> KafkaProducer:
        if self._producer is None:
            client = AIOKafkaProducer(bootstrap_servers=self.servers, **self.producer_options)
            self._producer = KafkaProducer(client, metadata_timeout=self.metadata_timeout)
        return self._producer

    def make_consumer(
        self, group: str, *, prefetch: int, max_buffer_bytes: int | None = None
    ) -> KafkaConsumer:
        options = {**self.consumer_options}
        if options.get("group_id") is None:
            options["group_id"] = group
        client = AIOKafkaConsumer(bootstrap_servers=self.servers, **options)
        transactions = None
        if self.transactional_id is not None:
            transactions = KafkaProducer(
                AIOKafkaProducer(
                    bootstrap_servers=self.servers,
                    **{**self.producer_options, "transactional_id": self.transactional_id},
                )
            )
        consumer = KafkaConsumer(
            client,
            commit_interval=self.commit_interval,
            commit_every=self.commit_every,
            revoke_timeout=self.revoke_timeout,
            max_batch=max(prefetch, 1),
            ensure_topics=self._ensure_topics,
            dead_letters=KafkaDeadLetters(self.producer(), options["group_id"]),
            transactions=transactions,
            group_id=options["group_id"],
        )
        return consumer

    async def _ensure_topics(self, topics: Sequence[str]) -> None:
        """Create missing topics (see :mod:`dispytch.kafka.replication`), then make sure the
        producer knows them (where creating was not allowed, this asks the broker to
        auto-create)."""
        producer = self.producer()
        await producer.start()
        await create_topics(self.servers, self.producer_options, topics, self.topics)
        for topic in topics:
            try:
                # A metadata request for a topic asks the broker to auto-create it.
                await asyncio.wait_for(
                    producer.producer.partitions_for(topic), self.metadata_timeout
                )
            except (KafkaError, TimeoutError) as exc:
                raise ConfigurationError(
                    f"Kafka topic {topic!r} does not exist and the broker did not create it "
                    f"within {self.metadata_timeout:g}s ({type(exc).__name__}); create it "
                    f"(kafka-topics.sh --create --topic {topic}) or enable "
                    "auto.create.topics.enable"
                ) from exc

    def reply_inbox(self, group: str) -> ReplyInbox:
        """The group's reply topic ``dispytch.reply.<group>``, read from its end outside any
        consumer group (see :class:`~dispytch.kafka.replies.KafkaInbox`)."""
        address = self.producer().reply_prefix + re.sub(r"[^A-Za-z0-9._-]", "_", group)
        return KafkaInbox(self._reader, self._partitions, address[:249])

    def _reader(self, group_id: str | None = None) -> AIOKafkaConsumer:
        """A consumer outside any group (or in ``group_id``, committing only when told): it
        commits nothing by itself and removes nothing."""
        options = {
            k: v
            for k, v in self.consumer_options.items()
            if k not in ("group_id", "enable_auto_commit", "auto_offset_reset")
        }
        return AIOKafkaConsumer(
            bootstrap_servers=self.servers,
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **options,
        )

    async def _partitions(self, topic: str) -> Sequence[int]:
        """The partitions of ``topic``, which the broker's auto-creation makes if needed."""
        await self._ensure_topics([topic])
        producer = self.producer()
        for _ in range(50):  # a new topic has no leader for a moment
            partitions = await producer.producer.partitions_for(topic)
            if partitions:
                return sorted(partitions)
            await asyncio.sleep(0.1)
        raise ConfigurationError(f"Kafka topic {topic!r} has no partitions; create it")

    async def close_connections(self) -> None:
        if self._producer is not None:
            await self._producer.close()
            self._producer = None

    def dead_letter_store(self, group: str | None = None) -> KafkaDeadLetterStore:
        """The dead letters in ``<topic>.dlq`` topics and the fallback topic of ``group`` (of
        every group when ``None``); removing one marks it in the committed offsets of consumer
        group ``dispytch.dlq-replay`` (see :mod:`dispytch.kafka.dlq`)."""
        return KafkaDeadLetterStore(self, group)

    async def dead_letters(
        self, topic: str, limit: int = 100, *, group: str | None = None
    ) -> list[DeadLetter]:
        """Read up to ``limit`` dead letters of ``topic``, oldest first, from its dead-letter
        topic and from the fallback topic of ``group`` (default: the groups of the consumers
        this backend built).

        Uses a consumer without a group, so nothing is committed and nothing is removed.
        """
        groups = (
            [group]
            if group is not None
            else [c.group for c in self.consumers if isinstance(c, KafkaConsumer) and c.group]
        )
        reader = self._reader()
        await reader.start()
        try:
            producer = self.producer()
            await producer.start()
            topics = [dead_letter_topic(topic), *(fallback_topic(g) for g in groups)]
            return await read_dead_letters(reader, producer, topics, topic, limit)
        finally:
            await asyncio.shield(reader.stop())


class _BootstrapErrors(logging.Filter):
    """Takes aiokafka's "Unable connect to host:port: <error>" records about our servers
    while the backend connects, and keeps the errors."""

    def __init__(self, servers: Sequence[str]) -> None:
        super().__init__()
        self.servers = set(servers)
        self.errors: list[BaseException] = []

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            isinstance(args, tuple)
            and len(args) == 3
            and isinstance(args[2], BaseException)
            and f"{args[0]}:{args[1]}" in self.servers
        ):
            self.errors.append(args[2])
            return False
        return True

    def cause(self, exc: BaseException) -> BaseException:
        return self.errors[-1] if self.errors else exc


async def _stop_quietly(client: AIOKafkaProducer) -> None:
    """Release what a client that failed to start holds (its connections, its tasks)."""
    # It failed already and that error is reported; stopping must not hide it.
    with contextlib.suppress(Exception):
        await asyncio.shield(client.stop())
