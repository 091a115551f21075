from dispytch.emitter.emitter import EventEmitter
from dispytch.events import EventBase  # the 0.10 path dispytch.emitter.EventBase
from dispytch.seam import Producer, ProducerTimeout

__all__ = ["EventBase", "EventEmitter", "Producer", "ProducerTimeout"]
