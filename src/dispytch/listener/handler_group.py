"""Dispytch 0.10 import path of :class:`~dispytch.handler.HandlerGroup`."""

from dispytch.handler import HandlerGroup

__all__ = ["HandlerGroup"]
