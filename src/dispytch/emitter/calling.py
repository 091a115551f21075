"""How the emitter calls a producer's ``send``: the convention, read from its signature once.

Dispytch 0.10 called ``producer.send(topic=..., payload=..., config=...)`` with keywords, so
producers written for it may take those keyword-only, or in another order. Producers written
later may take them positional-only. :func:`send_caller` inspects ``send`` once, when the
emitter is built, and returns a function that calls it the way it takes its arguments:

* ``topic``, ``payload`` and ``config`` by keyword when ``send`` accepts those names (as named
  parameters or ``**kwargs``), else positionally, in that order;
* ``key`` and ``headers`` by keyword, only when ``send`` accepts them (a seed-era producer that
  takes neither gets neither; its events lose their ordering key and headers).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["SendCaller", "send_caller"]

#: ``caller(topic, payload, config, key, headers)`` -> what ``send`` returned.
SendCaller = Callable[
    [str, bytes, BaseModel | None, bytes | None, Mapping[str, str] | None], Awaitable[Any]
]

_EITHER = inspect.Parameter.POSITIONAL_OR_KEYWORD
_NAMED = (_EITHER, inspect.Parameter.KEYWORD_ONLY)
_STANDARD = [("topic", _EITHER), ("payload", _EITHER), ("config", _EITHER)]


def accepts(send: Callable[..., Awaitable[Any]], name: str) -> bool:
    """Whether ``send`` takes the keyword ``name`` (as a named parameter or ``**kwargs``)."""
    try:
        params = inspect.signature(send).parameters
    except (TypeError, ValueError):
        return False
    param = params.get(name)
    if param is None:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return param.kind in _NAMED


def send_caller(send: Callable[..., Awaitable[Any]]) -> SendCaller | None:
    """A function that calls ``send`` with the convention its signature asks for, or ``None``
    when ``send`` has the standard signature of :meth:`Producer.send
    <dispytch.emitter.producer.Producer.send>` (``topic, payload, config`` in that order, ``key``
    and ``headers`` by keyword): the emitter then calls it directly, with no adapter between."""
    try:
        params = dict(inspect.signature(send).parameters)
    except (TypeError, ValueError):  # no readable signature: call it as 0.10 did
        return lambda t, p, c, k, h: send(topic=t, payload=p, config=c)
    any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    def takes(name: str) -> bool:
        param = params.get(name)
        return any_keyword if param is None else param.kind in _NAMED

    key, headers = takes("key"), takes("headers")
    first = [(p.name, p.kind) for p in list(params.values())[:3]]
    if key and headers and first == _STANDARD:
        return None  # positionally or by keyword, the same call
    if takes("topic") and takes("payload") and takes("config"):
        if key and headers:
            return lambda t, p, c, k, h: send(topic=t, payload=p, config=c, key=k, headers=h)
        if key:
            return lambda t, p, c, k, h: send(topic=t, payload=p, config=c, key=k)
        if headers:
            return lambda t, p, c, k, h: send(topic=t, payload=p, config=c, headers=h)
        return lambda t, p, c, k, h: send(topic=t, payload=p, config=c)
    if key and headers:
        return lambda t, p, c, k, h: send(t, p, c, key=k, headers=h)
    if key:
        return lambda t, p, c, k, h: send(t, p, c, key=k)
    if headers:
        return lambda t, p, c, k, h: send(t, p, c, headers=h)
    return lambda t, p, c, k, h: send(t, p, c)
