"""FastAPI-style dependency injection: markers, and call plans built once per handler."""

from dispytch.di.markers import Dependency, TopicSegment
from dispytch.di.plan import CallPlan, build_plan

__all__ = ["CallPlan", "Dependency", "TopicSegment", "build_plan"]
