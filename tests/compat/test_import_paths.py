"""Every public module path and name of Dispytch 0.10.1 imports, as a thin alias of ours.

The list was read from the 0.10.1 wheel (``pip download dispytch==0.10.1 --no-deps
--python-version 3.13 --only-binary=:all:``): each module's own classes, functions and type
aliases, and each package's re-exports. 0.10's internal helpers are not provided (see
``INTERNAL`` below); names a module merely imported for itself (``logger``, ``Consumer`` in
``dispytch.kafka.consumer``...) are not part of the list. 61 names in 34 modules, plus the
7 internal modules.
"""

from __future__ import annotations

import importlib

import pytest

import dispytch
from dispytch import errors

PUBLIC_0_10: dict[str, list[str]] = {
    "dispytch": [
        "Dependency",
        "Event",
        "EventBase",
        "EventEmitter",
        "EventListener",
        "HandlerGroup",
        "TopicSegment",
    ],
    "dispytch.di": ["Dependency", "Event", "TopicSegment"],
    "dispytch.di.context": ["EventHandlerContext"],
    "dispytch.di.dependency": ["Dependency", "DependencyType"],
    "dispytch.di.event": ["Event"],
    "dispytch.di.exc": [
        "CyclicDependencyError",
        "DependencyResolutionError",
        "InvalidGeneratorError",
    ],
    "dispytch.di.topic_segment": ["TopicSegment"],
    "dispytch.emitter": ["EventBase", "EventEmitter"],
    "dispytch.emitter.emitter": ["EventEmitter"],
    "dispytch.emitter.event": ["EventBase"],
    "dispytch.emitter.producer": ["Producer", "ProducerTimeout"],
    "dispytch.kafka": ["KafkaConsumer", "KafkaEventConfig", "KafkaProducer"],
    "dispytch.kafka.consumer": ["KafkaConsumer"],
    "dispytch.kafka.producer": ["KafkaEventConfig", "KafkaProducer"],
    "dispytch.listener": ["EventListener", "HandlerGroup"],
    "dispytch.listener.consumer": ["Consumer", "Message"],
    "dispytch.listener.handler_group": ["HandlerGroup"],
    "dispytch.listener.listener": ["EventListener"],
    "dispytch.rabbitmq": ["RabbitMQConsumer", "RabbitMQEventConfig", "RabbitMQProducer"],
    "dispytch.rabbitmq.consumer": ["RabbitMQConsumer"],
    "dispytch.rabbitmq.producer": ["RabbitMQEventConfig", "RabbitMQProducer"],
    "dispytch.redis": ["RedisConsumer", "RedisProducer"],
    "dispytch.redis.consumer": ["RedisConsumer"],
    "dispytch.redis.producer": ["RedisProducer"],
    "dispytch.serialization": ["Deserializer", "Serializer"],
    "dispytch.serialization.deserializer": ["Deserializer", "MessagePayload"],
    "dispytch.serialization.errors": ["DeserializationError", "FieldMissingError"],
    "dispytch.serialization.json": ["JSONDeserializer", "JSONSerializer"],
    "dispytch.serialization.json.deserializer": ["JSONDeserializer"],
    "dispytch.serialization.json.serializer": ["JSONSerializer"],
    "dispytch.serialization.msgpack": ["MessagePackDeserializer", "MessagePackSerializer"],
    "dispytch.serialization.msgpack.deserializer": ["MessagePackDeserializer"],
    "dispytch.serialization.msgpack.serializer": ["MessagePackSerializer"],
    "dispytch.serialization.serializer": ["Serializer"],
}

#: 0.10's machinery, replaced by call plans built at registration and the route table: not
#: provided (no 0.10 documentation uses them).
INTERNAL = {
    "dispytch.di.builder": ["get_dependency_tree"],
    "dispytch.di.extractor": ["extract_dependencies"],
    "dispytch.di.solver": ["solve_dependencies"],
    "dispytch.di.tree": ["ChildNode", "DependencyNode", "DependencyTree"],
    "dispytch.listener.handler": ["Handler"],
    "dispytch.listener.handler_tree": ["HandlerNode", "HandlerTree"],
    "dispytch.serialization.validator": ["validate_payload"],
}

NAMES = [(module, name) for module, names in PUBLIC_0_10.items() for name in names]


@pytest.mark.parametrize(("module", "name"), NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_0_10_name_imports(module: str, name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {module} import {name}", namespace)
    assert namespace[name] is not None


@pytest.mark.parametrize(("module", "name"), NAMES, ids=[f"{m}.{n}" for m, n in NAMES])
def test_0_10_names_are_aliases_not_copies(module: str, name: str) -> None:
    obj = getattr(importlib.import_module(module), name)
    same_name = {
        "CyclicDependencyError": errors.DependencyCycleError,
        "DependencyResolutionError": errors.RegistrationError,
        "DeserializationError": errors.DecodeError,
    }
    if name in same_name:
        assert obj is same_name[name]
    elif hasattr(dispytch, name):
        assert obj is getattr(dispytch, name)
    else:
        # Defined once: every path that names it gives the same object.
        homes = {id(getattr(importlib.import_module(m), name)) for m, n in NAMES if n == name}
        assert homes == {id(obj)}
