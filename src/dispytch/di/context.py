"""Dispytch 0.10's handler context, kept importable.

Dependencies no longer receive it: ask for what a 0.10 context carried directly, with an
``Event[...]`` parameter for the event and ``TopicSegment`` parameters for topic values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispytch.events import Event

__all__ = ["EventHandlerContext"]


@dataclass
class EventHandlerContext:
    """An event with the topic pattern and delimiter of the handler it was routed to."""

    event: Event[dict[str, Any]]
    topic_pattern: str
    topic_delimiter: str
