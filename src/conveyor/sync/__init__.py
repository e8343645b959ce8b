"""Locks that explain deadlocks (``conveyor.sync``).

Drop-in for ``threading``'s locks, inside pipelines or anywhere: they always track
their owner, and an acquire that would close a cycle of waiting threads raises
:class:`conveyor.DeadlockError` (the cycle spelled out, every involved thread's
stack) instead of hanging.
"""

from .._errors import DeadlockError
from ._locks import Condition, Lock, RLock, blocked_on

__all__ = ["Condition", "DeadlockError", "Lock", "RLock", "blocked_on"]
