"""The consumer half of the backend seam (:mod:`dispytch.seam`), at its 0.10 path."""

from dispytch.seam import (
    FAILURE_HEADER_PREFIX,
    FORWARDED_HEADER_PREFIX,
    Consumer,
    Failure,
    Message,
    Retried,
    RetryLater,
)

__all__ = [
    "FAILURE_HEADER_PREFIX",
    "FORWARDED_HEADER_PREFIX",
    "Consumer",
    "Failure",
    "Message",
    "Retried",
    "RetryLater",
]
