from dispytch.emitter.emitter import EventEmitter
from dispytch.emitter.producer import Producer, ProducerTimeout
from dispytch.events import EventBase  # the 0.10 path dispytch.emitter.EventBase

__all__ = ["EventBase", "EventEmitter", "Producer", "ProducerTimeout"]
