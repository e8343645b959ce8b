"""How functions and items cross the process boundary.

Functions and stage classes go with cloudpickle, so lambdas, closures and functions
defined in ``__main__`` work without the worker importing the user's script. Items
go with the standard pickler (protocol 5), which is faster for data, and fall back
to cloudpickle for the odd item that only cloudpickle can send (a lambda in a dict).
Both sides load with ``pickle.loads``.
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = ["dumps_function", "dumps_items", "first_unpicklable", "loads"]

PROTOCOL = 5
loads = pickle.loads


def dumps_function(obj: Any) -> bytes:
    import cloudpickle

    return bytes(cloudpickle.dumps(obj, protocol=PROTOCOL))


def dumps_items(items: Any) -> bytes:
    try:
        return pickle.dumps(items, PROTOCOL)
    except Exception:
        import cloudpickle

        return bytes(cloudpickle.dumps(items, protocol=PROTOCOL))


def first_unpicklable(items: list[Any]) -> tuple[int, BaseException] | None:
    """Find the item of a batch that cannot be pickled, and why."""
    for i, item in enumerate(items):
        try:
            dumps_items(item)
        except Exception as exc:
            return i, exc
    return None
