"""Serializers turn an envelope dict into bytes; deserializers turn bytes into an Envelope."""

from dispytch.serialization.deserializer import Deserializer, MessagePayload, envelope_from_mapping
from dispytch.serialization.serializer import Serializer

__all__ = ["Deserializer", "MessagePayload", "Serializer", "envelope_from_mapping"]
