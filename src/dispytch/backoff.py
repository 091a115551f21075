"""Capped exponential backoff with jitter: the wait of every reconnect and retry loop. Pure.

Waits double from ``initial`` up to ``cap``, and each one is spread by up to ``jitter`` either
way (0.5: between half and one and a half times the nominal wait), so the processes that lost
the same broker do not all come back in the same instant. Used by the consumers' reconnect and
fetch loops, the Redis Streams acknowledger, the listener's dead-letter retries (through
:class:`~dispytch.retry.RetryPolicy`) and ``dispytch run``'s worker restarts.
"""

from __future__ import annotations

import random
from collections.abc import Callable

__all__ = ["Backoff", "backoff_delay"]

# 2**64 times any sensible initial wait is past every cap: no float overflow for long outages.
_MAX_DOUBLINGS = 64


def backoff_delay(
    attempt: int,
    initial: float,
    cap: float,
    jitter: float = 0.5,
    *,
    factor: float = 2.0,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): ``initial * factor**(attempt-1)``,
    at most ``cap``, spread by ``jitter`` (0..1). ``factor=1`` gives a fixed wait."""
    base = min(initial * factor ** min(attempt - 1, _MAX_DOUBLINGS), cap)
    if jitter:
        base *= 1.0 - jitter + 2.0 * jitter * rand()
    return float(base)


class Backoff:
    """The failures in a row of one loop and the wait after each.

    ``delay = backoff.failed()`` after a failure (then wait ``delay``), ``backoff.succeeded()``
    once the operation works again (returns how many attempts had failed, and starts over).
    """

    __slots__ = ("cap", "failures", "initial", "jitter")

    def __init__(self, initial: float, cap: float, jitter: float = 0.5) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        #: Failed attempts since the last success.
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; return the seconds to wait before the next attempt."""
        self.failures += 1
        return backoff_delay(self.failures, self.initial, self.cap, self.jitter)

    def succeeded(self) -> int:
        """The operation worked: return how many attempts failed before it, and reset."""
        failures, self.failures = self.failures, 0
        return failures
