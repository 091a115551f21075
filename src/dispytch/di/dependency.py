"""Dispytch 0.10 import path of :class:`~dispytch.di.markers.Dependency`."""

from collections.abc import Callable
from typing import Any

from dispytch.di.markers import Dependency

#: What ``Dependency(func)`` accepts: a function, generator, context manager function or class.
DependencyType = Callable[..., Any]

__all__ = ["Dependency", "DependencyType"]
