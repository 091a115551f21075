"""The cluster profile seen from the fault tests: which node leads what, and crashing,
restarting, pausing nodes through ``scripts/cluster/cluster.sh``.

The clusters run with ``bash scripts/cluster/cluster.sh up`` (ports 29xxx); a backend's cluster
tests run when ``DISPYTCH_CLUSTER`` lists it (``kafka``, ``rabbitmq``, ``nats``,
``redis_streams``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from tests.faults.harness import REPO, run

CLUSTER_SH = str(REPO / "scripts" / "cluster" / "cluster.sh")
#: Every backend the cluster tests know, and the cluster.sh name of its cluster.
SERVICES = {"kafka": "kafka", "rabbitmq": "rabbitmq", "nats": "nats", "redis_streams": "redis"}

KAFKA_PORTS = {n: 29090 + n for n in (1, 2, 3)}
RABBITMQ_PORTS = {n: 29670 + n for n in (1, 2, 3)}
NATS_PORTS = {n: 29420 + n for n in (1, 2, 3)}
REDIS_PORTS = {n: 29380 + n for n in (1, 2, 3)}
SENTINEL_PORTS = (29391, 29392, 29393)


def listed() -> set[str]:
    return {b.strip() for b in os.environ.get("DISPYTCH_CLUSTER", "").split(",") if b.strip()}


def full_set() -> bool:
    """``DISPYTCH_CLUSTER_FULL=1`` runs every scenario; otherwise the representative subset."""
    return os.environ.get("DISPYTCH_CLUSTER_FULL", "") not in ("", "0")


async def cluster_sh(*args: str, timeout: float = 240.0) -> str:
    return await run("bash", CLUSTER_SH, *args, timeout=timeout)


@dataclass(frozen=True)
class Names:
    """What a test creates: topic, consumer group, (NATS) stream."""

    topic: str
    group: str
    stream: str


@dataclass(frozen=True)
class Cluster:
    """One backend's cluster: its URL and how to find and hurt its nodes."""

    name: str  # the backend, as in DISPYTCH_CLUSTER
    url: str

    @property
    def service(self) -> str:
        return SERVICES[self.name]

    @property
    def nodes(self) -> tuple[int, ...]:
        return (1, 2, 3)

    # -- node control --------------------------------------------------------------------------

    async def kill(self, node: int) -> None:
        """SIGKILL ``node``; returns once the process is gone."""
        await self._signal(node, signal.SIGKILL)

    async def start(self, node: int) -> float:
        """Start ``node`` again and wait until it serves; return the seconds it took."""
        began = time.monotonic()
        await cluster_sh("start", self.service, str(node))
        return time.monotonic() - began

    async def pause(self, node: int) -> None:
        """SIGSTOP ``node``: it holds its connections but answers nothing."""
        await self._signal(node, signal.SIGSTOP)

    async def resume(self, node: int) -> None:
        await self._signal(node, signal.SIGCONT)

    async def _signal(self, node: int, signum: signal.Signals) -> None:
        # The pid first, then the signal right away: the fault starts when the caller says.
        pid = int((await cluster_sh("pid", self.service, str(node))).strip() or 0)
        assert pid, f"{self.service} node {node} is not running"
        os.kill(pid, signum)
        if signum == signal.SIGKILL:
            deadline = time.monotonic() + 10
            while _state(pid) not in ("X", "Z"):
                assert time.monotonic() < deadline, f"pid {pid} still there after SIGKILL"
                await asyncio.sleep(0.01)

    async def healthy(self) -> bool:
        try:
            await cluster_sh("health", self.service, timeout=60)
        except AssertionError:
            return False
        return True

    # -- who leads -----------------------------------------------------------------------------

    async def replicas(self, names: Names) -> tuple[int | None, list[int]]:
        """The node leading the data of this test (Kafka: the topic's partition 0; RabbitMQ:
        the group's quorum queue; NATS: the stream; Redis: the master) and the in-sync
        followers. ``None`` while no leader is known."""
        if self.name == "kafka":
            return await _kafka_replicas(names.topic)
        if self.name == "rabbitmq":
            return await _rabbitmq_replicas(names.group)
        if self.name == "nats":
            return await _nats_replicas(names.stream)
        return await _redis_replicas()

    async def leader(self, names: Names, *, timeout: float = 60.0) -> int:
        """The leading node, waiting up to ``timeout`` seconds for one to be elected."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(Exception):
                leader, _ = await self.replicas(names)
                if leader is not None:
                    return leader
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no leader for the test's data in {timeout}s")
            await asyncio.sleep(0.5)

    async def new_leader(
        self, old: int, names: Names, *, timeout: float = 60.0
    ) -> tuple[int, float]:
        """Wait until a node other than ``old`` leads; return it and the seconds waited."""
        began = time.monotonic()
        deadline = began + timeout
        while True:
            with contextlib.suppress(Exception):
                leader, _ = await self.replicas(names)
                if leader is not None and leader != old:
                    return leader, time.monotonic() - began
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: n{old} still leads after {timeout}s")
            await asyncio.sleep(0.25)

    async def wait_whole(self, names: Names, *, timeout: float = 120.0) -> float:
        """Wait until the leader has every other node in sync again; return the seconds."""
        began = time.monotonic()
        deadline = began + timeout
        last: Any = None
        while True:
            with contextlib.suppress(Exception):
                last = await self.replicas(names)
                leader, followers = last
                # and the cluster itself whole again (RabbitMQ: no partition left)
                if leader is not None and len(followers) == len(self.nodes) - 1:
                    if await self.healthy():
                        return time.monotonic() - began
                    last = (
                        "replicas in sync, cluster not healthy (scripts/cluster/cluster.sh health)"
                    )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: replicas not back in sync after {timeout}s (last: {last})"
                )
            await asyncio.sleep(0.5)

    # -- clean up ------------------------------------------------------------------------------

    async def delete(self, names: Names) -> None:
        """Delete what a test made (best effort)."""
        topic, group, stream = names.topic, names.group, names.stream
        with contextlib.suppress(Exception):
            if self.name == "kafka":
                from aiokafka.admin import AIOKafkaAdminClient

                admin = AIOKafkaAdminClient(bootstrap_servers=_addresses(KAFKA_PORTS))
                await admin.start()
                try:
                    await admin.delete_topics([topic, f"{topic}.dlq"])
                finally:
                    await admin.close()
            elif self.name == "rabbitmq":
                for queue in (group, f"{topic}.dlq"):
                    with contextlib.suppress(Exception):
                        await cluster_sh("rabbitmqctl", "delete_queue", queue)
            elif self.name == "nats":
                import nats

                connection = await nats.connect(_nats_servers())
                try:
                    js = connection.jetstream()
                    for name in (stream, f"{stream}_dlq"):
                        with contextlib.suppress(Exception):
                            await js.delete_stream(name)
                finally:
                    await connection.close()
            else:
                from dispytch.redis.streams import RedisStreamsBackend

                backend = RedisStreamsBackend(self.url)
                try:
                    await backend.client.delete(topic, f"{topic}.dlq")
                finally:
                    await backend.close()


def _state(pid: int) -> str:
    """The process state letter in ``/proc/PID/stat`` (``Z``: a zombie, dead already)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "X"


def cluster_url(name: str) -> str:
    return {
        "kafka": "kafka://" + ",".join(_addresses(KAFKA_PORTS)),
        "rabbitmq": "amqp://guest:guest@" + ",".join(_addresses(RABBITMQ_PORTS)) + "/",
        "nats": "nats://" + ",".join(_addresses(NATS_PORTS)),
        "redis_streams": "redis+streams://"
        + ",".join(f"127.0.0.1:{p}" for p in SENTINEL_PORTS)
        + "/0?sentinel=dispytch",
    }[name]


def _addresses(ports: dict[int, int]) -> list[str]:
    return [f"127.0.0.1:{p}" for p in ports.values()]


def _nats_servers() -> list[str]:
    return [f"nats://{a}" for a in _addresses(NATS_PORTS)]


async def _kafka_replicas(topic: str) -> tuple[int | None, list[int]]:
    from aiokafka.admin import AIOKafkaAdminClient

    last: Exception | None = None
    for address in _addresses(KAFKA_PORTS):  # any live broker answers
        admin = AIOKafkaAdminClient(bootstrap_servers=address, request_timeout_ms=5000)
        try:
            await asyncio.wait_for(admin.start(), 5)
            (described,) = await asyncio.wait_for(admin.describe_topics([topic]), 5)
        except Exception as exc:
            last = exc
            continue
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
        (partition,) = [p for p in described["partitions"] if p["partition"] == 0]
        leader = partition["leader"]
        if leader is None or leader < 0:
            return None, []
        return leader, [n for n in partition["isr"] if n != leader]
    raise AssertionError(f"no Kafka node answered: {last}")


async def _rabbitmq_replicas(queue: str) -> tuple[int | None, list[int]]:
    """The quorum queue's Raft leader and the followers whose log is committed up to the
    leader's (a restarted member is "online" well before it has caught up)."""
    out = await cluster_sh("rabbitmq-queues", "quorum_status", queue, "--formatter", "json")
    members = json.loads(out)
    leader, commit = None, -1
    for member in members:
        if member.get("Raft State") == "leader":
            leader, commit = _rmq_node(member["Node Name"]), member.get("Commit Index", -1)
    followers = [
        _rmq_node(m["Node Name"])
        for m in members
        if m.get("Raft State") == "follower" and m.get("Commit Index", -2) >= commit - 100
    ]
    return leader, [n for n in followers if n is not None]


def _rmq_node(name: Any) -> int | None:
    if isinstance(name, str) and name.startswith("rmq") and "@" in name:
        return int(name[3 : name.index("@")])
    return None


async def _nats_replicas(stream: str) -> tuple[int | None, list[int]]:
    import nats

    connection = await nats.connect(_nats_servers(), connect_timeout=2, max_reconnect_attempts=1)
    try:
        info = await connection.jetstream(timeout=3).stream_info(stream)
    finally:
        await connection.close()
    cluster = info.cluster
    if cluster is None or not cluster.leader:
        return None, []
    followers = [int(p.name[1:]) for p in cluster.replicas or [] if p.current and not p.offline]
    return int(cluster.leader[1:]), followers


async def _redis_replicas() -> tuple[int | None, list[int]]:
    from redis.asyncio import Redis

    master: int | None = None
    for port in SENTINEL_PORTS:
        sentinel = Redis(host="127.0.0.1", port=port, socket_timeout=2, decode_responses=True)
        try:
            reply = await sentinel.execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "dispytch"
            )
        except Exception:
            continue
        finally:
            await sentinel.aclose()
        if reply:
            master = int(reply[1]) - 29380
            break
    if master is None:
        return None, []
    client = Redis(host="127.0.0.1", port=REDIS_PORTS[master], socket_timeout=2)
    try:
        info = await client.info("replication")
    finally:
        await client.aclose()
    if info.get("role") != "master":
        return None, []
    followers = []
    for key, value in info.items():
        if key.startswith("slave") and isinstance(value, dict) and value.get("state") == "online":
            followers.append(int(value["port"]) - 29380)
    return master, followers
