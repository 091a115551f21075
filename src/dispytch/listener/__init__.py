from dispytch.listener.consumer import Consumer, Failure, Message
from dispytch.listener.listener import EventListener, ListenerObserver

__all__ = ["Consumer", "EventListener", "Failure", "ListenerObserver", "Message"]
