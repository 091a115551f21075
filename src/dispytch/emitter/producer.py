"""The producer half of the backend seam (:mod:`dispytch.seam`), at its 0.10 path."""

from dispytch.seam import Outgoing, Producer, ProducerTimeout

__all__ = ["Outgoing", "Producer", "ProducerTimeout"]
