"""JSON codec, the default. Byte-compatible with Dispytch 0.10."""

from dispytch.serialization.json.deserializer import JSONDeserializer
from dispytch.serialization.json.serializer import JSONSerializer

__all__ = ["JSONDeserializer", "JSONSerializer"]
