"""FastAPI-style dependency injection: markers, and call plans built once per handler."""

from dispytch.di.markers import Dependency, TopicSegment
from dispytch.di.plan import CallPlan, build_plan
from dispytch.events import Event

__all__ = ["CallPlan", "Dependency", "Event", "TopicSegment", "build_plan"]
