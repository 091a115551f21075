"""Every use of nats-py's private parts, in one place.

Verified with nats-py 2.16.0 (the TLS guard also with 2.6 to 2.15). Each part checks that what
it needs is there and falls back otherwise; ``tests/unit/test_poison_conversions.py`` fails when
a nats-py release changes what the hardening relies on, ``tests/backends/test_compat_fallbacks.py``
(and ``pytest --compat-fallbacks``) run JetStream and core NATS on every fallback against the
live server, and CI runs the NATS tests against the newest nats-py too (``.ci/run``).

What else reads private state, and the fallback:

* :func:`flush_pending` (``Client._pending``, ``_pending_data_size`` and ``_transport``, as
  nats-py's flusher task writes them; else ``Client._flush_pending``): the publishes and
  subscriptions nats-py buffered reach the socket before a confirming PING
  (:func:`round_trip`). Fallback: ``flush()`` round trips until the public
  ``pending_data_size`` is 0.
* :func:`reader_alive` (``Client._reading_task``): a connection that looks connected but no
  longer reads. Fallback: taken as alive (a deaf connection is then noticed only by nats-py's
  own pings).
* :func:`force_reconnect` (public ``force_reconnect``, else ``_process_op_err``). Fallback: the
  connection is closed, and the consumer reports it lost.
* :func:`deliver_directly` (a subscription's ``_pending_queue`` and ``_pending_size``): nats-py's
  reader hands each core NATS message straight to the consumer, instead of queueing it for a
  task of the subscription's own that then calls a callback (two hand-overs less per message).
  Fallback: the subscription is made with a callback, as nats-py documents.
* :func:`connection_of`, :func:`consumer_name` (a pull subscription's ``_nc``/``_sub._conn``
  and ``_consumer``): hardening the subscription's connection, log lines. Fallbacks: not
  hardened here (the backend hardened its own connection already), ``"?"``.

**Refusing to send credentials without TLS.** A NATS server speaks first (``INFO {...}`` in
plaintext) and nats-py upgrades the connection to TLS only when that INFO says
``tls_required``, then sends ``CONNECT`` with the user, password or token. A server without TLS,
or anyone on the path who rewrites the INFO line, would receive the credentials in plaintext
even though the client was given a TLS context. :class:`TLSGuardClient` checks, right before
``CONNECT`` is written, that the connection really is TLS when TLS was asked for; otherwise the
connection fails with :class:`TLSRequiredError`. This applies to every reconnect too.
``Client._connect_command`` is called by ``_process_connect_init`` after the optional TLS
upgrade, and ``_transport._io_writer`` is the stream writer of the current connection. If a
nats-py version lacks ``_connect_command``, :data:`GUARDED` is false and :func:`probe_tls` (a
separate connection that reads the server's INFO first) is the fallback: it catches a server
without TLS, though not an active attacker.

**Surviving what a publisher sends** (:func:`harden`):

* *Bytes nats-py cannot decode kill its reader.* nats-py decodes a message's subject and reply
  with strict UTF-8 and parses its header block outside of any error handling; one message
  published with a subject that is not UTF-8 (or a malformed status line in its headers)
  raises inside the connection's read loop, which then ends: the connection stays "connected"
  and hears nothing more. A hardened connection decodes those defensively (a subject that is
  not UTF-8 keeps its bytes as surrogate escapes; a header block that cannot be parsed becomes
  :class:`UnparsedHeaders`), so the consumer can dead-letter the message. So does a header
  whose name is not ASCII, which nats-py would drop without a word.
* *A publisher can forge a status line.* A header block starting ``NATS/1.0 404`` makes
  nats-py's JetStream fetch take a stored message for a server status (it is dropped, or the
  fetch raises) and redeliver it forever. A message JetStream delivers (its reply is an
  ``$JS.ACK.`` subject) never carries a real status, so such headers become
  :class:`UnparsedHeaders` too.
* *A late PONG kills the reader too.* ``flush(timeout)`` cancels its future on timeout but
  leaves it queued; the PONG that arrives later sets the result of the cancelled future, which
  raises inside the read loop (the "deaf connection" after one timed-out emit). PONGs skip
  futures that are already done; :func:`reader_alive` tells whether the read loop still runs,
  for connections hardened too late or broken another way.
* *The publishes buffered by nats-py* must reach the socket before a confirming PING
  (:func:`flush_pending`: it writes nats-py's pending buffer, ``Client._pending``, to
  ``Client._transport`` as nats-py's flusher task does; else it waits for that task through
  ``Client._flush_pending``; else a first round trip).
"""

from __future__ import annotations

import asyncio
import json
import logging
import types
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NATSError

__all__ = [
    "GUARDED",
    "TLSGuardClient",
    "TLSRequiredError",
    "UnparsedHeaders",
    "connection_of",
    "consumer_name",
    "deliver_directly",
    "flush_pending",
    "force_reconnect",
    "harden",
    "private",
    "probe_tls",
    "reader_alive",
    "round_trip",
]

logger = logging.getLogger("dispytch.nats")

#: Seconds a server gets to answer a confirming PING by default (nats-py's own default).
CONFIRM_TIMEOUT = 10.0

#: The nats-py versions the private access below was checked against.
VERIFIED_VERSIONS = ("2.16.0",)


def private(obj: Any, name: str) -> Any:
    """``obj``'s private attribute ``name``, ``None`` when it has none.

    Every read of nats-py's private state in this module goes through here (the TLS guard's
    class check at import aside); the fallback tests replace it with one that finds nothing,
    which runs every fallback below against the live server.
    """
    return getattr(obj, name, None)


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
    writer = private(private(client, "_transport"), "_io_writer")
    if writer is not None and hasattr(writer, "get_extra_info"):
        return writer.get_extra_info("ssl_object") is not None
    info = private(client, "_server_info") or {}
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


# -- hardening -------------------------------------------------------------------------------

_HARDENED = "_dispytch_hardened"
_JS_ACK = b"$JS.ACK."
_STATUS = "Status"
_DESCRIPTION = "Description"
_warned: set[str] = set()


class UnparsedHeaders(dict[str, str]):
    """The headers of a message whose header block nats-py could not parse (empty); ``raw`` is
    the block as received."""

    def __init__(self, raw: bytes) -> None:
        super().__init__()
        self.raw = raw


def _warn_once(what: str) -> None:
    if what not in _warned:
        _warned.add(what)
        logger.warning(
            "this nats-py version lacks %s (verified with nats-py 2.16.0); Dispytch runs "
            "without that protection",
            what,
        )


def harden(connection: Client) -> Client:
    """Make ``connection`` survive messages it cannot decode and late PONGs (see above).
    Idempotent; returns ``connection``."""
    if getattr(connection, _HARDENED, False):
        return connection
    build = private(connection, "_build_message")
    process_headers = private(connection, "_process_headers")
    pongs = private(connection, "_pongs")
    if build is not None and getattr(connection, "msg_class", None) is not None:
        connection._build_message = types.MethodType(_build_message, connection)  # type: ignore[method-assign]
    else:
        _warn_once("Client._build_message")
    if process_headers is not None:
        connection._process_headers = types.MethodType(  # type: ignore[method-assign]
            _headers_parser(process_headers), connection
        )
    else:
        _warn_once("Client._process_headers")
    if isinstance(pongs, list) and private(connection, "_pongs_received") is not None:
        connection._process_pong = types.MethodType(_process_pong, connection)  # type: ignore[method-assign]
    else:
        _warn_once("Client._pongs")
    setattr(connection, _HARDENED, True)
    return connection


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


def _build_message(
    self: Any, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any
) -> Any:
    # The per-message path of every delivery: the common case costs two decodes, as before.
    try:
        subject_text = subject.decode()
        reply_text = reply.decode()
    except UnicodeDecodeError:
        subject_text, reply_text = _text(subject), _text(reply)
    if headers and _STATUS in headers and reply.startswith(_JS_ACK):
        headers = UnparsedHeaders(_header_block(headers))
    return self.msg_class(
        subject=subject_text,
        reply=reply_text,
        data=data,
        headers=headers,
        _client=self,
        _sid=sid,
    )


def _header_block(headers: dict[str, str]) -> bytes:
    """The header block that parsed into ``headers`` (near enough: spacing is not kept)."""
    status = headers.get(_STATUS, "")
    lines = [f"NATS/1.0 {status} {headers.get(_DESCRIPTION, '')}".rstrip()]
    lines += [f"{k}: {v}" for k, v in headers.items() if k not in (_STATUS, _DESCRIPTION)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def _headers_parser(original: Any) -> Any:
    async def process_headers(self: Any, headers: bytes) -> Any:
        if not headers:  # most messages: what nats-py returns for them, without its call
            return None
        try:
            parsed = await original(headers)
        except Exception:
            return UnparsedHeaders(bytes(headers))
        if headers and not headers.isascii() and _names_not_ascii(headers):
            return UnparsedHeaders(bytes(headers))
        return parsed

    return process_headers


def _names_not_ascii(block: bytes) -> bool:
    """Whether a header line of ``block`` has a name that is not ASCII: nats-py (2.16) drops
    such a header without a word, and the message would reach its handler without it."""
    for line in bytes(block).split(b"\r\n")[1:]:
        name, colon, _ = line.partition(b":")
        if colon and not name.isascii():
            return True
    return False


async def _process_pong(self: Any) -> None:
    pongs = self._pongs
    while pongs:
        future = pongs.pop(0)
        if not future.done():  # a flush that timed out cancelled its own future
            future.set_result(True)
            break
    self._pongs_received += 1
    self._pings_outstanding = 0


def reader_alive(connection: Client) -> bool:
    """Whether the connection's read loop runs (``True`` when this cannot be told)."""
    task = private(connection, "_reading_task")
    if not isinstance(task, asyncio.Task):
        return True
    return not task.done()


async def force_reconnect(connection: Client) -> None:
    """Make a connection that looks connected reconnect (its subscriptions are renewed)."""
    method = getattr(connection, "force_reconnect", None)
    if method is not None:
        await method()
        return
    _warn_once("Client.force_reconnect")  # nats-py < 2.10: the reconnect path it uses itself
    process_error = private(connection, "_process_op_err")
    if process_error is not None:
        await process_error(nats.errors.StaleConnectionError())
    else:  # no way to make it reconnect: close it, the consumer then reports it lost
        await connection.close()


class _Inbox:
    """Stands in for a subscription's pending queue: nats-py's reader calls :meth:`put_nowait`
    for each message (and counts a slow consumer when it raises ``QueueFull``)."""

    __slots__ = ("_accept", "_sub")

    def __init__(self, sub: Subscription, accept: Callable[[Msg], bool]) -> None:
        self._sub = sub
        self._accept = accept

    def put_nowait(self, msg: Msg) -> None:
        # nats-py added the payload to the subscription's pending bytes: the message is no
        # longer nats-py's to count (the consumer bounds what it holds itself).
        self._sub._pending_size -= len(msg.data)
        if not self._accept(msg):
            self._sub._pending_size += len(msg.data)  # nats-py subtracts it again on QueueFull
            raise asyncio.QueueFull

    # What else nats-py (2.16) calls on the queue: its drain waits for the queue to be done.
    def qsize(self) -> int:
        return 0

    def empty(self) -> bool:
        return True

    def task_done(self) -> None:
        return None

    async def join(self) -> None:
        return None


def deliver_directly(sub: Subscription, accept: Callable[[Msg], bool]) -> bool:
    """Make nats-py's reader call ``accept(msg)`` for each message of ``sub`` (a subscription
    made without a callback) as it reads it; ``accept`` returns ``False`` to have the message
    dropped as by a slow consumer. ``False`` when this nats-py lacks what that needs: subscribe
    with a callback instead."""
    queue = private(sub, "_pending_queue")
    if (
        not isinstance(queue, asyncio.Queue)
        or not isinstance(private(sub, "_pending_size"), int)
        or private(sub, "_cb") is not None
    ):
        return False
    sub._pending_queue = _Inbox(sub, accept)  # type: ignore[assignment]
    while not queue.empty():  # what arrived before the swap (none: no await in between)
        msg = queue.get_nowait()
        sub._pending_size -= len(msg.data)
        if not accept(msg):
            logger.warning("dropping a core NATS message: the consumer's buffer is full")
    return True


async def flush_pending(connection: Client, timeout: float) -> None:
    """Have nats-py write the publishes it buffered to the socket, and wait for that: a PING
    written right after this returns (with no await in between) follows them on the wire."""
    pending = private(connection, "_pending")
    writelines = getattr(private(connection, "_transport"), "writelines", None)
    if (
        connection.is_connected
        and isinstance(pending, list)
        and isinstance(private(connection, "_pending_data_size"), int)
        and callable(writelines)
    ):
        # What nats-py's flusher task does, done here and now: no waiting for the task to be
        # scheduled. No drain: the PONG that confirms them waits for every byte to go out.
        if pending:
            writelines(pending[:])
            connection._pending = []
            connection._pending_data_size = 0
        return
    flush = private(connection, "_flush_pending")
    if flush is not None:
        await asyncio.wait_for(flush(force_flush=True), timeout)
        return
    # Another nats-py: round trips (each kicks its flusher task) until its buffer is empty;
    # the public pending_data_size tells.
    _warn_once("Client._flush_pending")
    async with asyncio.timeout(timeout):
        while connection.pending_data_size:
            await connection.flush(timeout=timeout)  # type: ignore[arg-type]


async def round_trip(connection: Client, timeout: float = CONFIRM_TIMEOUT) -> None:
    """A PING/PONG that confirms everything written before it: nats-py (2.16) writes a PING
    to the socket at once but leaves subscriptions and publishes in its pending buffer for its
    flusher task, so its PONG alone could come back before the server has read them (a
    message published right after a ``subscribe()`` and ``flush()`` would then be missed)."""
    await flush_pending(connection, timeout)
    await connection.flush(timeout=timeout)  # type: ignore[arg-type]


def connection_of(subscription: Any) -> Client | None:
    """The connection a (pull) subscription belongs to."""
    connection = private(subscription, "_nc")
    if connection is None:
        connection = private(private(subscription, "_sub"), "_conn")
    return connection if isinstance(connection, Client) else None


def consumer_name(subscription: Any) -> str:
    """The JetStream consumer a pull subscription reads, for log lines."""
    return str(private(subscription, "_consumer") or "?")
