"""Per backend: the broker's own client as a hostile publisher (never Dispytch), the corpus
service it attacks (a ``dispytch run`` process; the memory backend runs in this process), where
the dead letters are read back, and the clean-up of what a run left on the shared broker."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import logging
import re
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dispytch import App
from dispytch.backend import backend_from_url
from dispytch.dead_letter import DeadLetter
from tests.faults.harness import ConsumerProcess, wait_for
from tests.helpers import is_utf8
from tests.poison.corpus import Bad
from tests.poison.service import make_app, skipped

__all__ = ["WIRES", "InProcessService", "ProcessService", "Service", "Wire"]

SERVICE_TARGET = "tests.poison.service:build"
_STATS = re.compile(r"corpus-stats skipped=(\d+)")
#: The format ``dispytch run`` logs in (the memory service's log is written the same way).
LOG_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class Service(ABC):
    """The corpus service, run by a backend: started, stopped, asked how it is."""

    @abstractmethod
    async def start(self) -> None:
        """Start it and wait until it listens."""

    @property
    @abstractmethod
    def alive(self) -> bool: ...

    @abstractmethod
    async def stop(self) -> int:
        """SIGTERM (or its equivalent); the exit code."""

    @abstractmethod
    def log(self) -> str:
        """Everything it logged, in ``dispytch run``'s format."""

    @abstractmethod
    async def skipped(self) -> int:
        """Messages its consumer skipped so far."""

    def describe(self) -> str:
        tail = "\n    ".join(self.log().splitlines()[-40:])
        return f"\n--- service log tail:\n    {tail}"


class ProcessService(Service):
    """``python -m dispytch run tests.poison.service:build`` (a new process at each start)."""

    def __init__(self, process: ConsumerProcess) -> None:
        self.process = process
        self._logs: list[str] = []

    async def start(self) -> None:
        if self.process.runs:
            self._logs.append(self.process.log())
        self.process.start()
        await self.process.ready(timeout=60)

    @property
    def alive(self) -> bool:
        return self.process.alive

    async def stop(self) -> int:
        if self.process.alive:
            self.process.signal(signal.SIGTERM)
        return await self.process.wait_exit(30)

    def log(self) -> str:
        return "".join(self._logs) + self.process.log()

    async def skipped(self) -> int:
        before = len(_STATS.findall(self.process.log()))
        self.process.signal(signal.SIGUSR1)
        await wait_for(
            lambda: len(_STATS.findall(self.process.log())) > before,
            10,
            "the service to report its stats",
            watch=[self.process],
        )
        return int(_STATS.findall(self.process.log())[-1])

    def cleanup(self) -> None:
        self.process.cleanup()


class InProcessService(Service):
    """The service in this process (``app.run()`` as a task), its log captured in the format
    ``dispytch run`` uses."""

    def __init__(self, make: Callable[[], App], log_path: Path) -> None:
        self.make = make
        self.log_path = log_path
        self.app: App | None = None
        self.task: asyncio.Task[None] | None = None
        self._handler: logging.Handler | None = None

    async def start(self) -> None:
        self._handler = logging.FileHandler(self.log_path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(self._handler)
        logging.getLogger("dispytch").setLevel(logging.INFO)
        app = self.app = self.make()
        self.task = asyncio.create_task(app.run())
        await wait_for(
            lambda: app.listener is not None or self.task is None or self.task.done(),
            30,
            "the in-process service to listen",
        )

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    async def stop(self) -> int:
        assert self.app is not None and self.task is not None
        self.app.request_stop()
        code = 0
        try:
            await asyncio.wait_for(self.task, 30)
        except Exception as exc:
            logging.getLogger("corpus").error("the service stopped with %r", exc)
            code = 1
        finally:
            if self._handler is not None:
                logging.getLogger().removeHandler(self._handler)
                self._handler.close()
        return code

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    async def skipped(self) -> int:
        return 0 if self.app is None else skipped(self.app)


class Wire(ABC):
    """A backend's hostile publisher, its corpus service and its dead letters."""

    #: backend name, as in DISPYTCH_BROKERS (``rabbitmq_classic`` needs ``rabbitmq``)
    listed_as: str
    port: int
    url: str
    delimiter: str
    #: whether dead letters of several topics may be read at once (RabbitMQ: one queue per
    #: group, which concurrent readers would share out between them)
    parallel_reads = True

    def __init__(self, backend: str, uid: str) -> None:
        self.backend = backend
        self.uid = uid
        self.prefix = f"pc{uid}"
        self.group = f"pc_{uid}"

    def options(self) -> dict[str, Any]:
        """Backend options of the service and of the dead-letter reader."""
        return {}

    def service(self, records: Path) -> Service:
        return ProcessService(
            ConsumerProcess(
                self.url,
                self.prefix,
                self.group,
                records,
                options=self.options(),
                max_deliveries=3,
                target=SERVICE_TARGET,
            )
        )

    async def open(self) -> None:
        """Connect the raw client."""

    async def close(self) -> None:
        """Disconnect the raw client."""

    async def prepare(self, topics: list[bytes]) -> None:
        """Before the service starts: create what the broker needs (Kafka topics)."""

    @abstractmethod
    async def publish(self, topic: bytes, bad: Bad) -> None:
        """Publish with the raw client; return once the broker has it."""

    async def dead_letters(self, topic: str) -> list[DeadLetter]:
        backend = backend_from_url(self.url, **self.options())
        read = backend.dead_letters
        try:
            if "group" in inspect.signature(read).parameters:
                return list(await read(topic, 500, group=self.group))  # type: ignore[call-arg]
            return list(await read(topic, 500))
        finally:
            await backend.close()

    async def left(self, topic: bytes) -> int | None:
        """After the service stopped: messages of ``topic`` the group has not settled (``None``
        where the broker keeps no such count per topic)."""
        return None

    async def left_in_group(self) -> int | None:
        """After the service stopped: messages the group has not settled, all topics together
        (``None`` where the broker keeps nothing, or counts per topic)."""
        return None

    async def cleanup(self) -> None:
        """Delete what the run created on the shared broker (best effort)."""


# -- Kafka -------------------------------------------------------------------------------------


class KafkaWire(Wire):
    listed_as, port, url, delimiter = "kafka", 9092, "kafka://127.0.0.1:9092", "."
    servers = "127.0.0.1:9092"

    async def open(self) -> None:
        from aiokafka import AIOKafkaProducer

        self.producer = AIOKafkaProducer(bootstrap_servers=self.servers)
        await self.producer.start()

    async def close(self) -> None:
        await self.producer.stop()

    async def _admin(self) -> Any:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.servers)
        await admin.start()
        return admin

    async def prepare(self, topics: list[bytes]) -> None:
        from aiokafka.admin import NewTopic

        admin = await self._admin()
        try:
            names = sorted({t.decode() for t in topics})
            await admin.create_topics([NewTopic(n, 1, 1) for n in names])
        finally:
            await admin.close()

    async def publish(self, topic: bytes, bad: Bad) -> None:
        from tests.kafka_batches import send_batch

        headers = [(bytes(n), v) for n, v in bad.headers if isinstance(v, bytes)]
        if bad.codec is not None or not all(is_utf8(n) for n, _ in headers):
            assert bad.key is None, "a raw batch carries no key here"
            await send_batch(
                self.servers,
                topic.decode(),
                [(bad.payload, headers)],
                0,
                bad.codec,  # type: ignore[arg-type]
            )
            return
        await self.producer.send_and_wait(
            topic.decode(),
            bad.payload,
            key=bad.key,
            headers=[(n.decode(), v) for n, v in headers],
            partition=0,
        )

    async def left(self, topic: bytes) -> int | None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        tp = TopicPartition(topic.decode(), 0)
        check = AIOKafkaConsumer(bootstrap_servers=self.servers, group_id=self.group)
        await check.start()
        try:
            committed = await check.committed(tp) or 0
            end = (await check.end_offsets([tp]))[tp]
        finally:
            await check.stop()
        return end - committed

    async def cleanup(self) -> None:
        admin = await self._admin()
        try:
            mine = [t for t in await admin.list_topics() if self.uid in t]
            if mine:
                await admin.delete_topics(mine)
        finally:
            await admin.close()


# -- RabbitMQ ----------------------------------------------------------------------------------


class RabbitMQWire(Wire):
    listed_as, port, url, delimiter = "rabbitmq", 5672, "amqp://guest:guest@127.0.0.1:5672/", "."
    parallel_reads = False

    @property
    def exchange(self) -> str:
        return f"pcx_{self.uid}"

    def options(self) -> dict[str, Any]:
        queue_type = "classic" if self.backend == "rabbitmq_classic" else "quorum"
        return {"exchange": self.exchange, "queue_type": queue_type}

    async def open(self) -> None:
        from tests.amqp_frames import RawPublisher

        self.raw = RawPublisher(self.url)
        await self.raw.__aenter__()

    async def close(self) -> None:
        await self.raw.__aexit__(None, None, None)

    async def publish(self, topic: bytes, bad: Bad) -> None:
        headers = list(bad.headers)
        if bad.key is not None:
            headers.append((b"x-dispytch-key", bad.key))
        await self.raw.publish(
            self.exchange, topic, bad.payload, headers=headers, **dict(bad.properties)
        )

    async def left_in_group(self) -> int | None:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.group, passive=True)
            return queue.declaration_result.message_count or 0

    async def cleanup(self) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        async with connection:
            for queue in (
                self.group,
                f"dispytch.dlq.{self.group}",
                f"dispytch.dlq-fallback.{self.group}",
            ):
                with contextlib.suppress(Exception):
                    channel = await connection.channel()
                    await channel.queue_delete(queue)  # type: ignore[attr-defined]
            with contextlib.suppress(Exception):
                channel = await connection.channel()
                await channel.exchange_delete(self.exchange)  # type: ignore[attr-defined]


# -- Redis -------------------------------------------------------------------------------------


class RedisWire(Wire):
    listed_as, port, url, delimiter = "redis", 6379, "redis://127.0.0.1:6379/0", ":"

    async def open(self) -> None:
        from redis.asyncio import Redis

        self.redis = Redis.from_url("redis://127.0.0.1:6379/0")

    async def close(self) -> None:
        await self.redis.aclose()

    async def publish(self, topic: bytes, bad: Bad) -> None:
        await self.redis.publish(topic, bad.payload)

    async def cleanup(self) -> None:
        keys = [key async for key in self.redis.scan_iter(match=f"*{self.uid}*", count=1000)]
        if keys:
            await self.redis.delete(*keys)


class RedisStreamsWire(RedisWire):
    listed_as, url = "redis_streams", "redis+streams://127.0.0.1:6379/0"

    async def publish(self, topic: bytes, bad: Bad) -> None:
        fields: dict[bytes, Any] = dict(bad.fields or {b"payload": bad.payload})
        if bad.fields is None:
            if bad.key is not None:
                fields[b"key"] = bad.key
            for name, value in bad.headers:
                fields[b"h:" + name] = value
        await self.redis.xadd(topic, fields)

    async def left(self, topic: bytes) -> int | None:
        groups = await self.redis.xinfo_groups(topic)
        mine = [g for g in groups if g["name"] in (self.group, self.group.encode())]
        if not mine:  # the group never read this stream
            return int(await self.redis.xlen(topic))
        return int(mine[0]["pending"]) + int(mine[0].get("lag") or 0)


# -- NATS --------------------------------------------------------------------------------------


class NATSWire(Wire):
    listed_as, port, url, delimiter = "nats", 4222, "nats://127.0.0.1:4222", "."

    @property
    def streams(self) -> tuple[str, str]:
        return f"pc{self.uid}", f"pc{self.uid}_dlq"

    def options(self) -> dict[str, Any]:
        stream, dead = self.streams
        return {
            "stream": stream,
            "subjects": [f"{self.prefix}.>"],
            "dead_letter_stream": dead,
            "ack_wait": 5,
        }

    async def open(self) -> None:
        from tests.nats_raw import RawNATS

        self.raw = RawNATS(self.port)
        await self.raw.__aenter__()

    async def close(self) -> None:
        await self.raw.__aexit__(None, None, None)

    async def publish(self, topic: bytes, bad: Bad) -> None:
        from tests.nats_raw import hpub, pub

        block = bad.header_block
        headers = [(n, v) for n, v in bad.headers if isinstance(v, bytes)]
        if bad.key is not None:
            headers.append((b"x-dispytch-key-b64", base64.b64encode(bad.key)))
        if block is None and headers:
            block = b"NATS/1.0\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
            block += b"\r\n"
        if block is None:
            await self.raw.send(pub(topic, bad.payload))
        else:
            await self.raw.send(hpub(topic, block, bad.payload))

    async def left_in_group(self) -> int | None:
        import nats

        nc = await nats.connect(f"nats://127.0.0.1:{self.port}")
        try:
            consumers = await nc.jetstream().consumers_info(self.streams[0])
        finally:
            await nc.close()
        return sum(c.num_pending + c.num_ack_pending for c in consumers)

    async def cleanup(self) -> None:
        from tests.backends.nats_streams import delete_streams

        await delete_streams(f"nats://127.0.0.1:{self.port}", *self.streams)


class NATSCoreWire(NATSWire):
    listed_as, url = "nats_core", "nats+core://127.0.0.1:4222"

    def options(self) -> dict[str, Any]:
        return {"dead_letter_stream": self.streams[1]}

    async def left_in_group(self) -> int | None:
        return None  # core NATS keeps nothing


# -- memory ------------------------------------------------------------------------------------


class MemoryWire(Wire):
    """No broker: the records go straight into a :class:`MemoryBroker` the service runs on."""

    listed_as, port, url, delimiter = "memory", 0, "memory://", ":"

    def __init__(self, backend: str, uid: str) -> None:
        from dispytch.memory.broker import MemoryBroker

        super().__init__(backend, uid)
        self.broker = MemoryBroker()

    def service(self, records: Path) -> Service:
        from dispytch.memory.backend import MemoryBackend

        def make() -> App:
            backend = MemoryBackend("memory://", broker=self.broker)
            return make_app(self.prefix, self.group, records, backend=backend)

        return InProcessService(make, records / "memory-service.log")

    async def publish(self, topic: bytes, bad: Bad) -> None:
        # A memory topic is text: bytes that are not UTF-8 become lone surrogates.
        self.broker.publish(
            topic.decode("utf-8", "surrogateescape"),
            bad.payload,
            key=bad.key,
            headers={n: v for n, v in bad.headers},  # type: ignore[misc]
        )

    async def dead_letters(self, topic: str) -> list[DeadLetter]:
        return self.broker.dead_letters(topic)


WIRES: dict[str, Callable[[str, str], Wire]] = {
    "kafka": KafkaWire,
    "rabbitmq": RabbitMQWire,
    "rabbitmq_classic": RabbitMQWire,
    "redis": RedisWire,
    "redis_streams": RedisStreamsWire,
    "nats": NATSWire,
    "nats_core": NATSCoreWire,
    "memory": MemoryWire,
}
