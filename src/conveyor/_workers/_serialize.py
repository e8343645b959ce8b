"""How functions and items cross the process boundary.

Functions and stage classes go with cloudpickle, so lambdas, closures and functions
defined in ``__main__`` work without the worker importing the user's script. Items
go with the standard pickler (protocol 5), which is faster for data (up to 3x for
instances of user classes), and switch to cloudpickle for a batch that refers to
``__main__`` (an instance of a class defined in the script) or that only cloudpickle
can send (a lambda in a dict). Both sides load with ``pickle.loads``; cloudpickle
keeps a class sent by value identical to the original when it comes back.
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
        data = pickle.dumps(items, PROTOCOL)
    except Exception:
        data = b"__main__"
    # A worker process does not import the user's script, so a class or function of
    # __main__ must travel by value. The pickler names the module in its output, so
    # one byte search tells (a string item that merely contains the word only costs a
    # second, correct, pickling).
    if b"__main__" in data:
        import cloudpickle

        data = bytes(cloudpickle.dumps(items, protocol=PROTOCOL))
    return data


def first_unpicklable(items: list[Any]) -> tuple[int, BaseException] | None:
    """Find the item of a batch that cannot be pickled, and why."""
    for i, item in enumerate(items):
        try:
            dumps_items(item)
        except Exception as exc:
            return i, exc
    return None
