"""Secrets out of everything Dispytch shows: reprs, log lines, error messages, CLI output.

:func:`redact` is the one function for that. Every URL in the text loses its secrets, whatever
its form::

    kafka://user:pw@h1:9092,h2:9092   -> kafka://user:***@h1:9092,h2:9092   (multi-host)
    nats://TOKEN@host:4222            -> nats://***@host:4222               (token-only userinfo)
    redis://h:6379/0?password=pw      -> redis://h:6379/0?password=***      (query secrets)

and the secret values passed in ``secrets`` (a backend's password, token, key password...) are
replaced wherever they occur, for the messages of broker clients that quote them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

__all__ = [
    "REDACTED",
    "guard_loggers",
    "is_secret_name",
    "redact",
    "redact_url",
    "secrets_of",
]

REDACTED = "***"

#: A query parameter or option whose name matches holds a secret: password, passwd, pwd,
#: secret, token, credentials, jwt, (nkeys) seed, signature, api/access/private keys...
_SECRET_NAME = re.compile(
    r"pass|pwd|secret|token|credential|jwt|seed|signature|cookie|auth"
    r"|(?:^|[_-])(?:api|access|private|secret|sasl)[_-]?key",
    re.IGNORECASE,
)
_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*://"
#: A URL inside text: up to whitespace or a quote; a ",scheme://" starts the next URL
#: (``nats://a@h1,nats://b@h2``).
_URL = re.compile(_SCHEME + r"(?:(?!," + _SCHEME + r")[^\s'\"<>`])*")
_QUERY_PAIR = re.compile(r"([^&;=#]+)=([^&;#]*)")


def is_secret_name(name: str) -> bool:
    """Whether a query parameter or option called ``name`` holds a secret."""
    return _SECRET_NAME.search(name) is not None


def redact_url(url: str) -> str:
    """``url`` with its userinfo password (or token), and every query value whose name says
    it is a secret, replaced by ``***``. Never raises, whatever the URL looks like."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            end = min(end, found)
    netloc, tail = rest[:end], rest[end:]
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        # No colon: the userinfo alone is a credential (a NATS token), so all of it goes.
        netloc = f"{user}:{REDACTED}@{hosts}" if colon else f"{REDACTED}@{hosts}"
    if "=" in tail:
        path, q, query = tail.partition("?")
        if q:
            query = _QUERY_PAIR.sub(_redact_pair, query)
            tail = f"{path}?{query}"
    return f"{scheme}://{netloc}{tail}"


def _redact_pair(match: re.Match[str]) -> str:
    name = match.group(1)
    return f"{name}={REDACTED}" if is_secret_name(unquote(name)) else match.group(0)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with the secrets of every URL in it, and each of ``secrets``, replaced by
    ``***``: what goes into a repr, a log line, an error message or the CLI's output."""
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    # Longest first: a secret that contains another is replaced whole.
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


def secrets_of(url: str, options: Mapping[str, Any] | None = None) -> frozenset[str]:
    """The secret values in ``url`` (password, token, secret query values) and in ``options``
    (string values of options whose name says they are secret), as written and decoded."""
    found: set[str] = set()
    for match in _URL.finditer(url):
        rest = match.group(0).partition("://")[2]
        netloc = re.split(r"[/?#]", rest, maxsplit=1)[0]
        userinfo, at, _ = netloc.rpartition("@")
        if at:
            user, colon, password = userinfo.partition(":")
            found.add(password if colon else user)
        _, q, query = rest.partition("?")
        if q:
            for name, value in _QUERY_PAIR.findall(query.partition("#")[0]):
                if is_secret_name(unquote(name)):
                    found.add(value)
    for name, value in (options or {}).items():
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if isinstance(value, str) and is_secret_name(name):
            found.add(value)
    found |= {unquote(s) for s in found}
    found.discard("")
    return frozenset(found)


class _SecretsFilter(logging.Filter):
    """Redacts known secrets from the records of broker clients' loggers (aiokafka logs its
    SASL request bytes, password included, at DEBUG level). Records that are not created
    (their level is off) cost nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: frozenset[str] = frozenset()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            clean = redact(message, self.secrets)
            if clean != message:
                record.msg, record.args = clean, None
        return True


_FILTER = _SecretsFilter()


def guard_loggers(names: Iterable[str], secrets: Iterable[str]) -> None:
    """Keep ``secrets`` out of what the loggers called ``names`` write, from now on."""
    _FILTER.secrets = _FILTER.secrets | frozenset(s for s in secrets if s)
    for name in names:
        log = logging.getLogger(name)
        if _FILTER not in log.filters:
            log.addFilter(_FILTER)
