"""Retry policy: which failures retry, how many times, and how long to wait. Pure."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from dispytch.backoff import backoff_delay
from dispytch.errors import RegistrationError

__all__ = ["RetryMode", "RetryPolicy", "check_retry_mode"]

Backoff = Literal["fixed", "exponential"]
#: Where a retry waits: ``"process"`` sleeps in the handler's slot (the default);
#: ``"broker"`` has the broker deliver the event again after the delay (see
#: :mod:`dispytch.broker_retries`).
RetryMode = Literal["process", "broker"]


def check_retry_mode(mode: object, what: str) -> RetryMode | None:
    """``mode`` if it is a retry mode (or ``None``); RegistrationError otherwise."""
    if mode is None or mode in ("process", "broker"):
        return mode
    raise RegistrationError(f"{what} must be 'process' or 'broker', got {mode!r}")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retries`` extra attempts after the first, for exceptions in ``retry_on``.

    ``backoff="fixed"`` waits ``interval`` seconds each time (the seed's behaviour);
    ``"exponential"`` waits ``interval * 2**(n-1)`` capped at ``max_interval``. ``jitter`` (0..1)
    spreads each wait randomly by up to that fraction, so many consumers do not retry in step.
    """

    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    interval: float = 1.25
    backoff: Backoff = "fixed"
    max_interval: float = 60.0
    jitter: float = 0.0

    @classmethod
    def build(
        cls,
        retries: int = 0,
        retry_on: type[BaseException] | Sequence[type[BaseException]] | None = None,
        retry_interval: float = 1.25,
        backoff: Backoff = "fixed",
        max_retry_interval: float = 60.0,
        jitter: float = 0.0,
    ) -> RetryPolicy:
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise RegistrationError(f"retries must be an int >= 0, got {retries!r}")
        if retry_on is None:
            kinds: tuple[type[BaseException], ...] = (Exception,)
        elif isinstance(retry_on, type):
            kinds = (retry_on,)
        else:
            try:
                kinds = tuple(retry_on)
            except TypeError:  # e.g. an exception instance: reported just below
                kinds = (retry_on,)  # type: ignore[assignment]
        for kind in kinds:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise RegistrationError(
                    f"retry_on must be an exception class or several, got {kind!r}"
                )
        if not all(_finite(v) and v >= 0 for v in (retry_interval, max_retry_interval)):
            raise RegistrationError(
                "retry_interval and max_retry_interval must be >= 0 (finite seconds), got "
                f"{retry_interval!r} and {max_retry_interval!r}"
            )
        if backoff not in ("fixed", "exponential"):
            raise RegistrationError(f"backoff must be 'fixed' or 'exponential', got {backoff!r}")
        if not (_finite(jitter) and 0.0 <= jitter <= 1.0):
            raise RegistrationError(f"jitter must be between 0 and 1, got {jitter!r}")
        return cls(retries, kinds, retry_interval, backoff, max_retry_interval, jitter)

    @property
    def attempts(self) -> int:
        return self.retries + 1

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """After ``attempt`` (1-based) failed with ``error``, is there another attempt?"""
        return attempt <= self.retries and isinstance(error, self.retry_on)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed ``attempt`` (1-based) before the next one."""
        if self.backoff == "exponential":
            return backoff_delay(attempt, self.interval, self.max_interval, self.jitter, rand=rand)
        return backoff_delay(1, self.interval, self.interval, self.jitter, rand=rand)


def _finite(value: object) -> bool:
    """A real number that is not NaN or infinite (``bool`` excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
