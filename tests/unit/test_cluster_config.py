"""Cluster settings without a broker: multi-host URLs, replication defaults, Sentinel URLs,
RabbitMQ node failover, the WAIT confirm of Redis Streams emits, the Pub/Sub --workers warning."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlparse

import pytest

from dispytch.backend import redact_url
from dispytch.errors import ConfigurationError, EmitError
from dispytch.hosts import parse_hosts
from dispytch.workers import ENV_WORKER_INDEX, ENV_WORKERS, worker_slot

# -- URLs naming several hosts ----------------------------------------------------------------


def test_parse_hosts_keeps_order_credentials_and_rest() -> None:
    hosts = parse_hosts("amqp://u:p%40ss@h1:5673,h2,[::1]:5674/vhost?heartbeat=5", 5672)
    assert hosts.hosts == (("h1", 5673), ("h2", 5672), ("::1", 5674))
    assert hosts.userinfo == "u:p%40ss"
    assert hosts.rest == "/vhost?heartbeat=5"
    assert hosts.url_for(1) == "amqp://u:p%40ss@h2:5672/vhost?heartbeat=5"
    assert hosts.url_for(2) == "amqp://u:p%40ss@[::1]:5674/vhost?heartbeat=5"
    assert hosts.addresses() == ["h1:5673", "h2:5672", "[::1]:5674"]


@pytest.mark.parametrize("url", ["nats://", "nats://u:p@", "nats://,", "no-scheme"])
def test_parse_hosts_refuses_a_url_without_hosts(url: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_hosts(url, 4222)


def test_parse_hosts_refuses_a_bad_port_and_does_not_show_the_password() -> None:
    with pytest.raises(ConfigurationError, match="'x' is not a port") as info:
        parse_hosts("nats://u:secret@h1:x,h2", 4222, shown="nats://u:***@h1:x,h2")
    assert "secret" not in str(info.value)


def test_redact_url_hides_the_password_of_a_multi_host_url() -> None:
    assert redact_url("amqp://u:secret@h1:1,h2:2/v") == "amqp://u:***@h1:1,h2:2/v"
    assert redact_url("redis+streams://:pw@s1,s2/0?sentinel=m") == (
        "redis+streams://:***@s1,s2/0?sentinel=m"
    )
    assert redact_url("kafka://a:1,b:2") == "kafka://a:1,b:2"


# -- Kafka topics ------------------------------------------------------------------------------


def test_kafka_topics_get_min_3_brokers_replicas_and_two_in_sync() -> None:
    from dispytch.kafka.replication import TopicSettings

    assert TopicSettings().resolve(brokers=1, default_partitions=1) == (1, 1, {})
    assert TopicSettings().resolve(brokers=2, default_partitions=4) == (2, 4, {})
    assert TopicSettings().resolve(brokers=5, default_partitions=1) == (
        3,
        1,
        {"min.insync.replicas": "2"},
    )
    chosen = TopicSettings(replication_factor=2, partitions=6, config={"retention.ms": 1000})
    assert chosen.resolve(brokers=3, default_partitions=1) == (2, 6, {"retention.ms": "1000"})
    with pytest.raises(ConfigurationError, match="replication_factor must be >= 1"):
        TopicSettings(replication_factor=0)


def test_kafka_backend_takes_topic_settings() -> None:
    from dispytch.kafka import KafkaBackend

    backend = KafkaBackend(
        "kafka://h1:1,h2:2,h3", replication_factor=3, topic_partitions=6, topic_config={}
    )
    assert backend.servers == ["h1:1", "h2:2", "h3:9092"]
    assert backend.topics.resolve(brokers=3, default_partitions=1) == (3, 6, {})


# -- NATS --------------------------------------------------------------------------------------


def test_nats_url_with_several_servers_becomes_a_server_list() -> None:
    from dispytch.nats.backend import _servers

    assert _servers("nats://u:p@h1:4223,h2") == ["nats://u:p@h1:4223", "nats://u:p@h2:4222"]
    assert _servers("nats://h1:4222,nats://h2:4223") == ["nats://h1:4222", "nats://h2:4223"]
    assert _servers("nats://h1,h2,nats://h3") == [
        "nats://h1:4222",
        "nats://h2:4222",
        "nats://h3:4222",
    ]


@pytest.mark.parametrize(
    ("servers", "replicas"),
    [
        (["nats://127.0.0.1:4222"], 1),
        (["nats://u:p@a:1", "nats://b:1"], 2),
        (["nats://a:1", "nats://b:1", "nats://c:1", "nats://d:1"], 3),
        (["nats://u:p@a:1", "nats://a:1"], 1),  # the same server, once with credentials
    ],
)
def test_nats_streams_get_min_3_servers_replicas(servers: list[str], replicas: int) -> None:
    from dispytch.nats.backend import stream_replicas

    client: Any = SimpleNamespace(servers=[urlparse(s) for s in servers])
    assert stream_replicas(client) == replicas


# -- RabbitMQ ----------------------------------------------------------------------------------


def test_rabbitmq_url_with_several_nodes_gives_one_url_per_node() -> None:
    from dispytch.rabbitmq.failover import node_urls

    assert node_urls("amqp://u:p@h1,h2:5673/v?heartbeat=5", "shown") == [
        "amqp://u:p@h1:5672/v?heartbeat=5",
        "amqp://u:p@h2:5673/v?heartbeat=5",
    ]
    assert node_urls("amqps://h1,h2", "shown") == ["amqps://h1:5671", "amqps://h2:5671"]
    single = "amqp://guest:guest@localhost/"
    assert node_urls(single, "shown") == [single]


async def test_rabbitmq_failover_connection_moves_to_the_next_node_on_each_reconnect() -> None:
    """aio-pika starts every reconnect attempt with ``transport = None``: from the first
    successful connection on, each attempt goes to the next node (and closing moves nothing)."""
    from yarl import URL

    from dispytch.rabbitmq.failover import FailoverConnection

    nodes = ["amqp://u:p@a:1/", "amqp://u:p@b:2/", "amqp://u:p@c:3/"]
    connection = FailoverConnection(URL(nodes[0]), nodes=nodes)
    connection.transport = None  # the first attempt: not connected yet, no move
    assert connection.url.host == "a"
    connection._rotate = True  # what _on_connected sets once connected
    connection.transport = None
    assert (connection.url.host, connection.url.port, connection.url.password) == ("b", 2, "p")
    connection.transport = None
    connection.transport = None
    assert connection.url.host == "a"
    connection._close_called = True
    connection.transport = None
    assert connection.url.host == "a"


async def test_rabbitmq_connect_tries_every_node_and_hides_the_password() -> None:
    from dispytch.errors import ConnectError
    from dispytch.rabbitmq import RabbitMQBackend
    from dispytch.rabbitmq.failover import connect

    url = "amqp://u:secret@127.0.0.1:1,127.0.0.1:2/"
    with pytest.raises(ConfigurationError) as info:
        await connect(url, redact_url(url), {"timeout": 2})
    assert "secret" not in str(info.value)
    backend = RabbitMQBackend(url)
    with pytest.raises(ConnectError) as refused:
        await backend.connect()
    assert "secret" not in str(refused.value)


# -- Redis Sentinel ----------------------------------------------------------------------------


def test_sentinel_url_names_the_sentinels_the_master_and_its_credentials() -> None:
    from dispytch.redis.sentinel import sentinel_target

    target = sentinel_target("rediss://u:p%21@s1,s2:26380/3?sentinel=main", "shown", None)
    assert target is not None
    assert target.master == "main"
    assert target.connection == {"db": 3, "username": "u", "password": "p!", "ssl": True}
    assert [(s.connection_pool.connection_kwargs["host"],) for s in target._sentinel.sentinels] == [
        ("s1",),
        ("s2",),
    ]
    assert sentinel_target("redis://h:6379/0", "shown", None) is None


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("redis://s1/0?sentinel=", None, "needs the master's name"),
        ("redis://s1/0?sentinel=m&socket_timeout=1", None, "as options"),
        ("redis://s1/x?sentinel=m", None, "database number"),
        ("redis://s1/0", {"password": "x"}, "names no Sentinel master"),
    ],
)
def test_sentinel_url_mistakes_are_explained(
    url: str, options: dict[str, Any] | None, message: str
) -> None:
    from dispytch.redis.sentinel import sentinel_target

    with pytest.raises(ConfigurationError, match=message):
        sentinel_target(url, "shown", options)


def test_streams_backend_waits_for_one_replica_with_sentinel_only() -> None:
    from dispytch.redis.streams import RedisStreamsBackend

    with_sentinel = RedisStreamsBackend("redis+streams://s1,s2/0?sentinel=main")
    assert with_sentinel.wait_replicas == 1
    assert with_sentinel.producer().wait_replicas == 1
    assert RedisStreamsBackend("redis+streams://h:6379/0").producer().wait_replicas == 0
    chosen = RedisStreamsBackend("redis+streams://s1/0?sentinel=main", wait_replicas=0)
    assert chosen.wait_replicas == 0


class _Pipe:
    """Records the commands a producer queues; replies as told."""

    def __init__(self, replies: list[Any]) -> None:
        self.commands: list[tuple[Any, ...]] = []
        self.replies = replies

    def execute_command(self, *args: Any) -> None:
        self.commands.append(args[:2] if args[0] == "XADD" else args)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        return self.replies


class _Redis:
    def __init__(self, replies: list[Any]) -> None:
        self.pipe = _Pipe(replies)

    def pipeline(self, transaction: bool = True) -> _Pipe:
        return self.pipe

    async def execute_command(self, *args: Any) -> Any:
        """A lone command (no confirmation asked for) is sent without a pipeline."""
        self.pipe.execute_command(*args)
        return self.pipe.replies[0]


async def test_streams_emit_waits_for_replicas_and_raises_when_they_do_not_confirm() -> None:
    from dispytch.redis.streams.producer import RedisStreamsProducer

    confirmed = _Redis([b"1-0", 1])
    producer = RedisStreamsProducer(confirmed, wait_replicas=1, wait_timeout=0.5)  # type: ignore[arg-type]
    await producer.send("t", b"x")
    assert confirmed.pipe.commands == [("XADD", "t"), ("WAIT", 1, 500)]

    lagging = _Redis([b"1-0", ValueError("refused"), 0])
    producer = RedisStreamsProducer(lagging, wait_replicas=1)  # type: ignore[arg-type]
    results = await producer.send_many(
        [SimpleNamespace(topic="t", payload=b"x", key=None, headers=None)] * 2  # type: ignore[list-item]
    )
    assert isinstance(results[0], EmitError) and "1 entries but 0 of the 1" in str(results[0])
    assert isinstance(results[1], EmitError) and "refused" in str(results[1])

    plain = _Redis([b"1-0"])
    await RedisStreamsProducer(plain).send("t", b"x")  # type: ignore[arg-type]
    assert plain.pipe.commands == [("XADD", "t")]


# -- --workers ---------------------------------------------------------------------------------


def test_worker_slot_reads_the_supervisor_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_WORKERS, raising=False)
    monkeypatch.delenv(ENV_WORKER_INDEX, raising=False)
    assert worker_slot() == (0, 1)
    monkeypatch.setenv(ENV_WORKERS, "4")
    monkeypatch.setenv(ENV_WORKER_INDEX, "2")
    assert worker_slot() == (2, 4)
    monkeypatch.setenv(ENV_WORKER_INDEX, "junk")
    assert worker_slot() == (0, 1)


@pytest.mark.parametrize(("index", "warned"), [("0", True), ("1", False)])
async def test_redis_pubsub_warns_once_that_workers_do_not_share_events(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, index: str, warned: bool
) -> None:
    from dispytch.redis import RedisBackend

    monkeypatch.setenv(ENV_WORKERS, "3")
    monkeypatch.setenv(ENV_WORKER_INDEX, index)
    backend = RedisBackend("redis://127.0.0.1:1/0")
    with caplog.at_level(logging.WARNING, logger="dispytch.redis"):
        backend.consumer("billing", prefetch=10)
    lines = [r.getMessage() for r in caplog.records if "does not share work" in r.getMessage()]
    if warned:
        assert len(lines) == 1
        assert "each of the 3 workers of group 'billing'" in lines[0]
        assert "redis+streams://" in lines[0]
    else:
        assert not lines
    await backend.close()


async def test_redis_pubsub_does_not_warn_in_a_single_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from dispytch.redis import RedisBackend

    monkeypatch.delenv(ENV_WORKERS, raising=False)
    backend = RedisBackend("redis://127.0.0.1:1/0")
    with caplog.at_level(logging.WARNING, logger="dispytch.redis"):
        backend.consumer("billing", prefetch=10)
    assert not [r for r in caplog.records if "does not share work" in r.getMessage()]
    await backend.close()


def test_dispytch_run_workers_tells_each_worker_its_index(tmp_path: Any) -> None:
    """``--workers 2``: each worker process sees DISPYTCH_WORKERS=2 and its own index."""
    import os
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "svc.py").write_text(
        "import os\n"
        "from dispytch import App, Event\n"
        "app = App('memory://workers')\n"
        "@app.handler(topic='t', event='e')\n"
        "async def h(event: Event): ...\n"
        "@app.on_startup\n"
        "def ready():\n"
        "    print('SLOT', os.environ['DISPYTCH_WORKER_INDEX'], os.environ['DISPYTCH_WORKERS'],"
        " flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispytch", "run", "svc:app", "--workers", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert proc.stdout is not None
        slots: list[list[str]] = []
        deadline = time.monotonic() + 60
        while len(slots) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("SLOT"):
                slots.append(line.split()[1:])
        assert sorted(slots) == [["0", "2"], ["1", "2"]]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


async def test_rabbitmq_nack_reopens_the_publishing_channel_at_most_every_few_seconds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A channel whose quorum-queue state went stale nacks every publish (RabbitMQ 3.10 after
    two leader changes); a nack reopens the channel, not more often than REOPEN_INTERVAL."""
    import asyncio
    from unittest.mock import AsyncMock, MagicMock

    from aio_pika.abc import AbstractExchange, AbstractRobustChannel

    from dispytch.rabbitmq import producer as producer_module
    from dispytch.rabbitmq.wire import PublishRefusedError

    channel = MagicMock(spec=AbstractRobustChannel)
    channel.reopen = AsyncMock()
    exchange = MagicMock(spec=AbstractExchange)
    exchange.name = "dispytch"
    exchange.channel = channel

    async def nacked(self: Any, exchange: Any, batch: list[Any]) -> list[BaseException | None]:
        return [PublishRefusedError("nack") for _ in batch]

    monkeypatch.setattr(producer_module.RabbitMQProducer, "_publish_now", nacked)
    producer = producer_module.RabbitMQProducer(exchange)
    for _ in range(3):
        with pytest.raises(PublishRefusedError):
            await producer.send("t", b"x")
    await asyncio.sleep(0)  # the reopening task runs
    assert channel.reopen.await_count == 1
    producer._reopened_at -= producer_module.REOPEN_INTERVAL
    with pytest.raises(PublishRefusedError):
        await producer.send("t", b"x")
    await asyncio.sleep(0)
    assert channel.reopen.await_count == 2
