"""State that threads and processes update atomically (``conveyor.shared``).

:class:`Counter` and :class:`Dict` live in shared memory. Pass them to stage
functions on threads or processes (as globals, closures, ``functools.partial``
arguments or stage class attributes) or to ``multiprocessing.Process``: a process
that receives one attaches to the same memory. Every operation is atomic across
threads and processes, ``Dict.update(key, fn)`` included, and a process killed in
the middle of one, even holding the lock, neither blocks the others nor leaves a
half-written value behind.
"""

from ._shared import DEFAULT_CAPACITY as DEFAULT_CAPACITY
from ._shared import CapacityError as CapacityError
from ._shared import Counter as Counter
from ._shared import Dict as Dict

__all__ = ["DEFAULT_CAPACITY", "CapacityError", "Counter", "Dict"]
