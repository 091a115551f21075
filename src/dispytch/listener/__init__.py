from dispytch.handler import HandlerGroup  # the 0.10 path dispytch.listener.HandlerGroup
from dispytch.listener.consumer import Consumer, Failure, Message
from dispytch.listener.listener import EventListener, ListenerObserver

__all__ = [
    "Consumer",
    "EventListener",
    "Failure",
    "HandlerGroup",
    "ListenerObserver",
    "Message",
]
