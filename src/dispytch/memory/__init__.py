"""In-memory backend: a real broker's semantics inside one process, for tests and demos.

Topics are append-only logs; each consumer group has its own cursors (a new group starts at
the beginning, like Kafka's ``earliest``); consumers in one group compete for messages; a
message is redelivered when it is nacked or its consumer closes before acking it; dead letters
go to ``<topic>.dlq`` with failure headers.
"""

from dispytch.dead_letter import DeadLetter
from dispytch.memory.backend import MemoryBackend
from dispytch.memory.broker import MemoryBroker
from dispytch.memory.client import MemoryConsumer, MemoryProducer

__all__ = ["DeadLetter", "MemoryBackend", "MemoryBroker", "MemoryConsumer", "MemoryProducer"]
