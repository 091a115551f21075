"""Dispytch: async event-driven services with pydantic events and FastAPI-style dependencies."""

from dispytch.app import App
from dispytch.dedup import DedupStore, MemoryDedup
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
    RequestFailed,
    RequestTimeout,
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
    "DedupStore",
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
    "MemoryDedup",
    "Middleware",
    "MissingExtraError",
    "PayloadValidationError",
    "RegistrationError",
    "RequestFailed",
    "RequestTimeout",
    "ShutdownError",
    "SubscriptionLostError",
    "TopicSegment",
    "__version__",
]
