"""MessagePack codec (``pip install "dispytch[msgpack]"``). Byte-compatible with Dispytch 0.10."""

from dispytch.errors import MissingExtraError

try:
    import msgpack  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingExtraError("msgpack", "msgpack") from exc

from dispytch.serialization.msgpack.deserializer import MessagePackDeserializer
from dispytch.serialization.msgpack.serializer import MessagePackSerializer

__all__ = ["MessagePackDeserializer", "MessagePackSerializer"]
