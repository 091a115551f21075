"""Dispytch: async event-driven services with pydantic events and FastAPI-style dependencies."""

from dispytch.app import App
from dispytch.di.markers import Dependency, TopicSegment
from dispytch.emitter.emitter import EventEmitter
from dispytch.errors import (
    ConfigurationError,
    ConnectError,
    DeadLetterError,
    DecodeError,
    DependencyCycleError,
    DispytchError,
    EmitError,
    HandlerTimeout,
    InvalidTopicError,
    ListenerError,
    MissingExtraError,
    PayloadValidationError,
    RegistrationError,
    ShutdownError,
    SubscriptionLostError,
)
from dispytch.events import Event, EventBase
from dispytch.handler import HandlerGroup
from dispytch.listener.listener import EventListener
from dispytch.middleware import Middleware

__version__ = "0.11.0"

__all__ = [
    "App",
    "ConfigurationError",
    "ConnectError",
    "DeadLetterError",
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
    "HandlerTimeout",
    "InvalidTopicError",
    "ListenerError",
    "Middleware",
    "MissingExtraError",
    "PayloadValidationError",
    "RegistrationError",
    "ShutdownError",
    "SubscriptionLostError",
    "TopicSegment",
    "__version__",
]
