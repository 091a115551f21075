"""The public names and the seed's import paths stay importable; the core imports no broker
client."""

import subprocess
import sys
import textwrap

import dispytch


def test_all_names_are_importable() -> None:
    assert len(dispytch.__all__) == len(set(dispytch.__all__))
    for name in dispytch.__all__:
        assert getattr(dispytch, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from dispytch import *", namespace)
    assert set(dispytch.__all__) <= set(namespace)


def test_version() -> None:
    assert isinstance(dispytch.__version__, str) and dispytch.__version__.count(".") >= 2


def test_seed_import_paths() -> None:
    from dispytch import (
        Dependency,
        Event,
        EventBase,
        EventEmitter,
        EventListener,
        HandlerGroup,
        TopicSegment,
    )
    from dispytch.emitter.producer import Producer, ProducerTimeout
    from dispytch.listener.consumer import Consumer, Message
    from dispytch.serialization.json import JSONDeserializer, JSONSerializer
    from dispytch.serialization.msgpack import MessagePackDeserializer, MessagePackSerializer

    for obj in (
        Dependency,
        Event,
        EventBase,
        EventEmitter,
        EventListener,
        HandlerGroup,
        TopicSegment,
        Producer,
        ProducerTimeout,
        Consumer,
        Message,
        JSONSerializer,
        JSONDeserializer,
        MessagePackSerializer,
        MessagePackDeserializer,
    ):
        assert isinstance(obj, type), obj
    assert issubclass(ProducerTimeout, Exception)


def test_errors_share_one_base() -> None:
    for name in dispytch.__all__:
        obj = getattr(dispytch, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, dispytch.DispytchError), name


def test_import_dispytch_imports_no_broker_client() -> None:
    code = textwrap.dedent(
        """
        import sys
        import dispytch
        from dispytch import App
        App("memory://")  # building an in-memory app needs no client either
        clients = ("aiokafka", "aio_pika", "aiormq", "redis", "nats", "msgpack")
        print(sorted(m for m in sys.modules if m.split(".")[0] in clients))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_the_seam_is_one_module_reexported_at_the_documented_paths() -> None:
    import dispytch.backend
    import dispytch.emitter
    import dispytch.emitter.producer
    import dispytch.listener
    import dispytch.listener.consumer
    from dispytch import seam

    homes = {
        "Consumer": (dispytch.listener.consumer, dispytch.listener),
        "Message": (dispytch.listener.consumer, dispytch.listener),
        "Failure": (dispytch.listener.consumer, dispytch.listener),
        "Producer": (dispytch.emitter.producer, dispytch.emitter),
        "ProducerTimeout": (dispytch.emitter.producer, dispytch.emitter),
        "Outgoing": (dispytch.emitter.producer,),
        "Backend": (dispytch.backend,),
    }
    for name, modules in homes.items():
        defined = getattr(seam, name)
        assert defined.__module__ == "dispytch.seam", name
        for module in modules:
            assert getattr(module, name) is defined, (module.__name__, name)
    assert set(homes) <= set(seam.__all__)
