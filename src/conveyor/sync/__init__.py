"""Locks that explain deadlocks (``conveyor.sync``).

Drop-in for ``threading``'s locks, inside pipelines or anywhere: they always track
their owner, and an acquire that would close a cycle of waiting threads raises
:class:`conveyor.DeadlockError` (the cycle spelled out, every involved thread's
stack) instead of hanging. Lock-order checking (:func:`check_order`, off by default)
reports an inversion (a then b here, b then a there) even in a run that did not hang.
"""

from .._errors import DeadlockError as DeadlockError
from ._locks import NATIVE as NATIVE
from ._locks import BoundedSemaphore as BoundedSemaphore
from ._locks import Condition as Condition
from ._locks import Event as Event
from ._locks import Lock as Lock
from ._locks import RLock as RLock
from ._locks import Semaphore as Semaphore
from ._locks import blocked_on as blocked_on
from ._locks import deadlock_policy as deadlock_policy
from ._order import LockOrderError as LockOrderError
from ._order import LockOrderWarning as LockOrderWarning
from ._order import OrderProblem as OrderProblem
from ._order import OrderReport as OrderReport
from ._order import check_order as check_order
from ._order import checking_order as checking_order
from ._order import order_problems as order_problems

__all__ = [
    "NATIVE",
    "BoundedSemaphore",
    "Condition",
    "DeadlockError",
    "Event",
    "Lock",
    "LockOrderError",
    "LockOrderWarning",
    "OrderProblem",
    "OrderReport",
    "RLock",
    "Semaphore",
    "blocked_on",
    "check_order",
    "checking_order",
    "deadlock_policy",
    "order_problems",
]
