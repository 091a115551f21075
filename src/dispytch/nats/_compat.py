"""The one place that touches nats-py internals: refusing to send credentials without TLS.

A NATS server speaks first (``INFO {...}`` in plaintext) and nats-py upgrades the connection
to TLS only when that INFO says ``tls_required``, then sends ``CONNECT`` with the user,
password or token. A server without TLS, or anyone on the path who rewrites the INFO line,
would receive the credentials in plaintext even though the client was given a TLS context.
:class:`TLSGuardClient` checks, right before ``CONNECT`` is written, that the connection really
is TLS when TLS was asked for; otherwise the connection fails with :class:`TLSRequiredError`.
This applies to every reconnect too.

Verified with nats-py 2.6 to 2.16 (``Client._connect_command`` is called by
``_process_connect_init`` after the optional TLS upgrade, and ``_transport._io_writer`` is the
stream writer of the current connection). If a nats-py version lacks ``_connect_command``,
:data:`GUARDED` is false and :func:`probe_tls` (a separate connection that reads the server's
INFO first) is the fallback: it catches a server without TLS, though not an active attacker.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NATSError

__all__ = ["GUARDED", "TLSGuardClient", "TLSRequiredError", "probe_tls"]

#: Whether the in-connection check works with the installed nats-py.
GUARDED = callable(getattr(Client, "_connect_command", None))


class TLSRequiredError(NATSError):
    """TLS was asked for, but the server did not upgrade the connection: nothing was sent."""

    def __str__(self) -> str:
        return (
            "TLS was asked for, but the server does not offer TLS (its INFO has no "
            "tls_required); nothing was sent, the credentials stay unsent"
        )


def _is_tls(client: Any) -> bool:
    writer = getattr(getattr(client, "_transport", None), "_io_writer", None)
    if writer is not None and hasattr(writer, "get_extra_info"):
        return writer.get_extra_info("ssl_object") is not None
    info = getattr(client, "_server_info", None) or {}
    return bool(info.get("tls_required")) or bool(client.options.get("tls_handshake_first"))


class TLSGuardClient(Client):
    """A nats-py client that never writes ``CONNECT`` over plaintext when ``require_tls``."""

    require_tls = False

    def _connect_command(self) -> bytes:
        if self.require_tls and not _is_tls(self):
            raise TLSRequiredError()
        command: bytes = super()._connect_command()
        return command


async def probe_tls(host: str, port: int, timeout: float) -> bool:
    """Whether the server at ``host:port`` requires TLS, from its INFO line (a separate,
    short connection that sends nothing)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    _, _, payload = line.decode("utf-8", "replace").partition(" ")
    try:
        info = json.loads(payload)
    except ValueError:
        return False
    return bool(isinstance(info, dict) and info.get("tls_required"))
