from dispytch.handler import HandlerGroup  # the 0.10 path dispytch.listener.HandlerGroup
from dispytch.listener.listener import EventListener, ListenerObserver
from dispytch.seam import Consumer, Failure, Message

__all__ = [
    "Consumer",
    "EventListener",
    "Failure",
    "HandlerGroup",
    "ListenerObserver",
    "Message",
]
