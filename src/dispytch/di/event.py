"""Dispytch 0.10 import path of :class:`~dispytch.events.Event`."""

from dispytch.events import Event

__all__ = ["Event"]
