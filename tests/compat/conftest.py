"""The conformance suite's fixtures: compat behaviours that depend on the broker run on memory
and on every live broker listed in ``DISPYTCH_BROKERS``."""

from tests.conformance.conftest import backend, make_app, topic, uid

__all__ = ["backend", "make_app", "topic", "uid"]
