"""Dispytch 0.10 import path of :class:`~dispytch.events.EventBase`."""

from dispytch.events import EventBase

__all__ = ["EventBase"]
