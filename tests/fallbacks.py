"""Run the backends on every fallback of their ``_compat`` module.

Each backend reads a broker client's private state only through ``dispytch.<backend>._compat``,
and each read goes through that module's ``private(obj, name)``. :func:`force_fallbacks` makes
every ``private`` find nothing, as with a client release whose internals all changed, so each
``_compat`` function takes its documented fallback. ``pytest --compat-fallbacks`` does it for a
whole run (CI runs the conformance suite so: the delivery contract must hold on the
fallbacks too); ``tests/backends/test_compat_fallbacks.py`` does it test by test.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

BACKENDS = ("kafka", "rabbitmq", "nats", "redis")
#: Detection results a ``_compat`` module caches (per client class): emptied, so they are
#: detected again through the patched ``private``.
CACHES: dict[str, tuple[str, ...]] = {"rabbitmq": ("_ledger_types",)}


def _nothing(obj: Any, name: str) -> Any:
    return None


def force_fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Patch every installed backend's ``_compat.private``; returns the backends patched."""
    patched = []
    for backend in BACKENDS:
        try:
            module = importlib.import_module(f"dispytch.{backend}._compat")
        except ImportError:  # the extra is not installed
            continue
        monkeypatch.setattr(module, "private", _nothing)
        for cache in CACHES.get(backend, ()):
            monkeypatch.setattr(module, cache, {})
        patched.append(backend)
    return patched
