"""Creating the topics a listener needs, replicated as the cluster allows (topic names and
dead-letter destinations: :mod:`dispytch.kafka.topics`).

Kafka's own auto-creation uses the broker's ``default.replication.factor``, which is 1 unless an
operator changed it: on a three-broker cluster such a topic lives on one broker and is lost
with it. So a topic Dispytch creates gets, unless told otherwise:

* ``min(3, brokers)`` replicas (R3 on a cluster of three or more, R1 on a single broker);
* ``min.insync.replicas=2`` when it has three replicas or more, so an emit (``acks=all``) is
  confirmed only once two brokers have the record: losing any one broker loses nothing;
* the broker's ``num.partitions`` partitions.

Topics that exist are left as they are. When the cluster refuses ``CreateTopics`` (no ``CREATE``
permission), the broker's auto-creation is the fallback, as before.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from dispytch.errors import ConfigurationError
from dispytch.untrusted import loggable

__all__ = ["TopicSettings", "create_topics", "default_topic_config"]

logger = logging.getLogger("dispytch.kafka")

#: Topics get at most this many replicas by default.
MAX_DEFAULT_REPLICAS = 3
_ADMIN_PARAMS = frozenset(inspect.signature(AIOKafkaAdminClient).parameters) - {"loop"}

_TOPIC_ALREADY_EXISTS = 36
#: Not allowed to create topics: leave it to the broker's auto-creation.
_NOT_AUTHORIZED = frozenset({29, 31})  # TOPIC_/CLUSTER_AUTHORIZATION_FAILED


class TopicSettings:
    """How new topics are created: ``None`` means "decide from the cluster"."""

    def __init__(
        self,
        replication_factor: int | None = None,
        partitions: int | None = None,
        config: Mapping[str, str | int] | None = None,
    ) -> None:
        for name, value in (("replication_factor", replication_factor), ("partitions", partitions)):
            if value is not None and value < 1:
                raise ConfigurationError(f"topic {name} must be >= 1 or None, got {value}")
        self.replication_factor = replication_factor
        self.partitions = partitions
        self.config = None if config is None else {k: str(v) for k, v in config.items()}

    def resolve(self, brokers: int, default_partitions: int) -> tuple[int, int, dict[str, str]]:
        """Replication factor, partitions and topic config for a cluster of ``brokers``."""
        replicas = self.replication_factor or max(1, min(MAX_DEFAULT_REPLICAS, brokers))
        partitions = self.partitions or default_partitions
        config = default_topic_config(replicas) if self.config is None else dict(self.config)
        return replicas, partitions, config


def default_topic_config(replicas: int) -> dict[str, str]:
    """Topic settings Dispytch adds to a topic of ``replicas`` replicas it creates."""
    return {"min.insync.replicas": "2"} if replicas >= 3 else {}


def admin_options(client_options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a producer or consumer that an admin client takes too (auth, TLS...)."""
    return {k: v for k, v in client_options.items() if k in _ADMIN_PARAMS}


async def create_topics(
    servers: Sequence[str],
    options: Mapping[str, Any],
    topics: Sequence[str],
    settings: TopicSettings,
) -> None:
    """Create those of ``topics`` that do not exist, as ``settings`` says."""
    if not topics:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=list(servers), **admin_options(options))
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        brokers = cluster.get("brokers") or []
        default_partitions = await _broker_partitions(admin, brokers)
        replicas, partitions, config = settings.resolve(len(brokers), default_partitions)
        response = await admin.create_topics(
            [NewTopic(t, partitions, replicas, topic_configs=config) for t in topics]
        )
    finally:
        await admin.close()
    for topic, code, message in response.topic_errors:
        if code in (0, _TOPIC_ALREADY_EXISTS):
            continue
        if code in _NOT_AUTHORIZED:
            logger.debug("not allowed to create Kafka topic %s; relying on auto-creation", topic)
            continue
        raise ConfigurationError(
            f"Kafka refused to create topic {loggable(topic)} with {partitions} partition(s) "
            f"and {replicas} replica(s): {loggable(message or str(code))}; create it yourself "
            "or pass replication_factor=/topic_partitions= that the cluster can satisfy"
        )


async def _broker_partitions(admin: AIOKafkaAdminClient, brokers: list[dict[str, Any]]) -> int:
    """The broker's ``num.partitions`` (what auto-creation would use); 1 if it cannot be read."""
    if not brokers:
        return 1
    resource = ConfigResource(ConfigResourceType.BROKER, str(brokers[0]["node_id"]), None)
    with contextlib.suppress(KafkaError, LookupError, ValueError, TypeError):
        for response in await admin.describe_configs([resource]):
            for entry in response.resources[0][4]:
                if entry[0] == "num.partitions":
                    return max(1, int(entry[1]))
    return 1
