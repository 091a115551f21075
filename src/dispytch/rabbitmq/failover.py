"""Connections to a RabbitMQ cluster: one URL naming several nodes, and failover between them.

``amqp://user:pass@node1:5672,node2:5672,node3:5672/vhost`` names the nodes of one cluster.
aio-pika connects to one URL, so:

* the first connection tries the nodes in turn, starting at a random one (connections of many
  processes spread over the cluster), and fails only when none accepts it;
* once connected, a lost connection is re-established by aio-pika's robust connection, which
  here moves to the next node on every attempt (:class:`FailoverConnection`): a dead node is
  left for the next one instead of being retried until it comes back. Channels, queues,
  bindings and consumers are restored on the new node by aio-pika as after any reconnect.

Quorum queues are replicated to every node, so a consumer reconnected to another node goes on
with the same queue; messages it held unacknowledged are delivered again (to it or another
consumer of the group).

The internals this relies on are in :class:`~dispytch.rabbitmq._compat.FailoverConnection`
(with the aio-pika version checked and the fallback).
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import aiormq
from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection
from yarl import URL

from dispytch.errors import ConfigurationError
from dispytch.hosts import parse_hosts
from dispytch.rabbitmq._compat import FailoverConnection, failover_supported
from dispytch.redaction import redact

__all__ = ["FailoverConnection", "connect", "connect_nodes", "node_urls"]

logger = logging.getLogger("dispytch.rabbitmq")

_DEFAULT_PORTS = {"amqp": 5672, "amqps": 5671}


def node_urls(url: str, shown: str) -> list[str]:
    """One single-host URL per node named in ``url`` (in the URL's order)."""
    scheme = url.partition("://")[0].lower()
    hosts = parse_hosts(url, _DEFAULT_PORTS.get(scheme, 5672), shown=shown)
    if len(hosts.hosts) == 1:
        return [url]
    return [hosts.url_for(i) for i in range(len(hosts.hosts))]


async def connect_nodes(
    url: str, options: Mapping[str, Any], made: list[AbstractRobustConnection]
) -> AbstractRobustConnection:
    """A robust connection to the first node of ``url`` that accepts one, trying them from a
    random one on; raises the last node's error when none does. Every connection object made
    is appended to ``made`` (the caller closes those of a failed start)."""
    nodes = node_urls(url, redact(url))
    start = random.randrange(len(nodes))
    order = nodes[start:] + nodes[:start]
    last: BaseException | None = None
    for i, node in enumerate(order):
        rest = order[i:] + order[:i]

        def tracked(*args: Any, rest: list[str] = rest, **kwargs: Any) -> RobustConnection:
            connection = (
                FailoverConnection(*args, nodes=rest, **kwargs)
                if len(rest) > 1 and failover_supported()
                else RobustConnection(*args, **kwargs)
            )
            made.append(connection)
            return connection

        before = len(made)
        try:
            connection: AbstractRobustConnection = await aio_pika.connect_robust(
                node, connection_class=tracked, **options
            )
        except (ConnectionError, OSError, aiormq.exceptions.AMQPError) as exc:
            last = exc
            logger.debug("RabbitMQ node %s refused: %s", _shown(URL(node)), type(exc).__name__)
            if i + 1 < len(order):  # another node follows: this one's object is done with
                for failed in made[before:]:
                    with contextlib.suppress(Exception):
                        await failed.close()
                del made[before:]
            continue
        return connection
    assert last is not None
    raise last


async def connect(url: str, safe_url: str, options: Mapping[str, Any]) -> AbstractRobustConnection:
    """:func:`connect_nodes`, raising :class:`ConfigurationError` naming the URL without its
    password when no node accepts a connection."""
    made: list[AbstractRobustConnection] = []
    try:
        return await connect_nodes(url, options, made)
    except (ConnectionError, OSError, aiormq.exceptions.AMQPError) as exc:
        for failed in made:
            with contextlib.suppress(Exception):
                await failed.close()
        raise ConfigurationError(
            f"cannot connect to RabbitMQ at {safe_url} ({type(exc).__name__}: "
            f"{_hide(exc, url)}); check that the broker runs and that the URL's user, password "
            "and vhost are right"
        ) from None


def _shown(url: URL) -> str:
    return f"{url.host}:{url.port}"


def _hide(exc: BaseException, url: str) -> str:
    text = str(exc)
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    return text.replace(password, "***") if password else text
