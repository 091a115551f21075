"""Dispytch 0.10 import path of :class:`~dispytch.di.markers.TopicSegment`."""

from dispytch.di.markers import TopicSegment

__all__ = ["TopicSegment"]
