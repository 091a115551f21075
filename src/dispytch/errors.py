"""The one exception hierarchy of Dispytch.

Every error the framework raises derives from :class:`DispytchError`, and every message says what
went wrong and what to do about it.
"""

from __future__ import annotations


class DispytchError(Exception):
    """Base class of every error raised by Dispytch."""


class ConfigurationError(DispytchError):
    """The application is wired wrongly (bad URL, bad option, missing extra)."""


class MissingExtraError(ConfigurationError, ImportError):
    """A backend or codec needs an optional dependency that is not installed."""

    def __init__(self, extra: str, module: str) -> None:
        super().__init__(
            f"dispytch[{extra}] needs the package {module!r}, which is not installed; "
            f'install it with: pip install "dispytch[{extra}]"'
        )
        self.extra = extra


class ConnectError(ConfigurationError, ConnectionError):
    """The broker could not be reached, refused the TLS handshake or the credentials, or did
    not answer within ``connect_timeout``. The message names the broker (without secrets) and
    the cause; ``dispytch run`` prints it as one line and exits with code 2."""


class RegistrationError(DispytchError):
    """A handler, dependency or event class is invalid; raised when it is registered."""


class DependencyCycleError(RegistrationError):
    """Dependencies depend on each other in a circle."""


class InvalidGeneratorError(RegistrationError):
    """A generator dependency yielded no value, or more than one; it must yield exactly once.
    Raised while the handler runs (the attempt fails), as the generator's body decides."""


class MissingTopicError(RegistrationError, TypeError):
    """A handler was registered without a topic or an event type, and its group has no
    default for it. Also a ``TypeError``, the error Dispytch 0.10 raised here."""


class EmitError(DispytchError):
    """An event could not be emitted; the broker did not confirm it."""


class InvalidTopicError(EmitError):
    """A topic, or a field value that fills one of its ``{placeholders}``, breaks a rule of the
    broker or of topic routing (empty, a delimiter or wildcard inside, too long...). Raised
    before anything is sent; ``field`` names the placeholder (``None`` for the whole topic)
    and ``rule`` the rule that was broken."""

    def __init__(self, message: str, *, field: str | None = None, rule: str = "") -> None:
        super().__init__(message)
        self.field = field
        self.rule = rule


class EventTemplateError(EmitError):
    """An event's ``__topic__`` names a field the event does not have."""


class DecodeError(DispytchError):
    """A message's bytes are not a valid Dispytch envelope. Never retried."""


class FieldMissingError(DecodeError):
    """The decoded envelope lacks required fields (``id``, ``type``, ``body``)."""

    def __init__(self, *fields: str) -> None:
        self.fields = fields
        names = ", ".join(repr(f) for f in fields) or "a required field"
        super().__init__(
            f"envelope has no {names} field; a Dispytch envelope carries id, type, "
            "body and timestamp"
        )


class PayloadValidationError(DispytchError):
    """An envelope's body or a topic segment failed validation. Never retried."""


class DeadLetterError(DispytchError):
    """A message could be stored neither in its dead-letter destination nor in the fallback
    one. The consumer stops without acknowledging it (the broker keeps it); fix the
    dead-letter destination (permissions, name, size limits) and restart."""


class HandlerTimeout(DispytchError, TimeoutError):
    """A handler attempt ran longer than its ``timeout`` and was cancelled. A failure like any
    other: retried as the handler's retry policy says, then dead-lettered. Raise the timeout
    (``@handler(..., timeout=...)`` or the app's ``handler_timeout``) or make the handler
    faster."""


class ShutdownError(DispytchError):
    """Handlers were still running after the shutdown timeout and ignored cancellation for the
    grace period that followed. Their messages were handed back unacknowledged; the process
    has to exit (``dispytch run`` exits non-zero). Let ``asyncio.CancelledError`` propagate in
    handlers (do not catch it, or re-raise it)."""


class ListenerError(DispytchError):
    """The listener was used wrongly (for example started twice)."""


class SubscriptionLostError(DispytchError):
    """The broker ended a subscription (its queue was deleted, say) and it could not be made
    again. Nothing is acknowledged that was not handled; restart the service once the queue
    or stream exists again."""


class RequestTimeout(DispytchError, TimeoutError):
    """``app.request()`` got no reply within its ``timeout``: no service handles the event, its
    handler returned ``None``, or it is slow. Check that a handler for the event runs and
    returns its reply, or raise ``timeout=``."""


class RequestFailed(DispytchError):
    """The handler of a request failed for good (it was dead-lettered) and the service sent
    the failure back instead of a reply. ``error_type`` and ``handler`` say what failed."""

    def __init__(self, message: str, *, error_type: str = "", handler: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.handler = handler


class TransactionError(DispytchError):
    """A Kafka transaction (a batch of handler outputs with the input offsets they answer)
    could not be committed, and the consumer stopped without committing anything more: what
    it handled since the last committed transaction is aborted and handled again by the next
    consumer (exactly-once is kept, at the cost of a restart). Check the broker, and that no
    other process uses the same ``transactional_id`` (it fences this one)."""
