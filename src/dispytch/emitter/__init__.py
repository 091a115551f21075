from dispytch.emitter.emitter import EventEmitter
from dispytch.emitter.producer import Producer, ProducerTimeout

__all__ = ["EventEmitter", "Producer", "ProducerTimeout"]
