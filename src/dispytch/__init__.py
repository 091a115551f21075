"""Dispytch: async event-driven services with pydantic events and FastAPI-style dependencies."""

from dispytch.app import App
from dispytch.di.markers import Dependency, TopicSegment
from dispytch.emitter.emitter import EventEmitter
from dispytch.errors import (
    ConfigurationError,
    ConnectError,
    DecodeError,
    DependencyCycleError,
    DispytchError,
    EmitError,
    InvalidTopicError,
    ListenerError,
    MissingExtraError,
    PayloadValidationError,
    RegistrationError,
    SubscriptionLostError,
)
from dispytch.events import Event, EventBase
from dispytch.handler import HandlerGroup
from dispytch.listener.listener import EventListener

__version__ = "0.11.0"

__all__ = [
    "App",
    "ConfigurationError",
    "ConnectError",
    "DecodeError",
    "Dependency",
    "DependencyCycleError",
    "DispytchError",
    "EmitError",
    "Event",
    "EventBase",
    "EventEmitter",
    "EventListener",
    "HandlerGroup",
    "InvalidTopicError",
    "ListenerError",
    "MissingExtraError",
    "PayloadValidationError",
    "RegistrationError",
    "SubscriptionLostError",
    "TopicSegment",
    "__version__",
]
