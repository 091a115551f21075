"""Dispytch 0.10 names of the dependency errors (the classes live in :mod:`dispytch.errors`).

``DependencyResolutionError`` is :class:`~dispytch.errors.RegistrationError`: dependency
problems are found when a handler is registered.
"""

from dispytch.errors import DependencyCycleError as CyclicDependencyError
from dispytch.errors import InvalidGeneratorError
from dispytch.errors import RegistrationError as DependencyResolutionError

__all__ = ["CyclicDependencyError", "DependencyResolutionError", "InvalidGeneratorError"]
