"""Decode errors under their Dispytch 0.10 names (the classes live in :mod:`dispytch.errors`)."""

from dispytch.errors import DecodeError as DeserializationError
from dispytch.errors import FieldMissingError

__all__ = ["DeserializationError", "FieldMissingError"]
