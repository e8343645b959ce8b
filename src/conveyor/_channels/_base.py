"""The channel contract.

A channel is a bounded, multi-producer multi-consumer FIFO of items with the
blocking vocabulary of :mod:`queue`:

* ``put`` / ``put_many`` block while the channel is full; with ``block=False`` or
  a ``timeout`` they raise :class:`queue.Full` instead of waiting.
* ``get`` / ``get_many`` block while it is empty; with ``block=False`` or a
  ``timeout`` they raise :class:`queue.Empty`.
* ``close()`` ends the stream: ``put`` after it raises :class:`~conveyor.Closed`;
  ``get`` returns what is left, then raises :class:`~conveyor.Closed` instead of
  blocking forever.
* ``maxsize`` counts items, however an implementation groups them: at most
  ``maxsize`` items wait in a channel.

Every implementation (in-memory for threads, shared memory for processes, later
Redis) passes the same test suite, ``tests/channels/test_contract.py``.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterable

T = TypeVar("T")

ChannelKind = Literal["thread", "process"]
CHANNEL_KINDS: tuple[str, ...] = ("thread", "process")


class Full(queue.Full):
    """``queue.Full`` that also says how many items of a ``put_many`` did go in."""

    def __init__(self, put_count: int = 0) -> None:
        super().__init__(
            f"channel is full ({put_count} item(s) of this call were put before it gave up)"
            if put_count
            else "channel is full"
        )
        self.put_count = put_count


@dataclass(frozen=True)
class ChannelStats:
    """A snapshot of a channel."""

    size: int
    """Items waiting now."""
    maxsize: int
    closed: bool
    put_count: int
    """Items put since the channel was made."""
    get_count: int
    """Items taken since the channel was made."""


def check_maxsize(maxsize: object) -> int:
    if isinstance(maxsize, bool) or not isinstance(maxsize, int):
        raise TypeError(f"maxsize must be an int >= 1, got {maxsize!r}")
    if maxsize < 1:
        raise ValueError(
            f"maxsize must be >= 1, got {maxsize}: every channel is bounded "
            "(queue.Queue's maxsize=0 for 'unbounded' has no equivalent; pick a bound)"
        )
    return maxsize


def check_timeout(timeout: float | None) -> float | None:
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"timeout must be None or a number >= 0, got {timeout!r}")
    return timeout


def check_max_items(max_items: object) -> int:
    if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
        raise ValueError(f"max_items must be an int >= 1, got {max_items!r}")
    return max_items


def _channel_class(kind: str) -> type[Channel[Any]]:
    if kind == "thread":
        from ._memory import MemoryChannel

        return MemoryChannel
    if kind == "process":
        from ._shm import ProcessChannel

        return ProcessChannel
    raise ValueError(f"kind must be one of {', '.join(map(repr, CHANNEL_KINDS))}, got {kind!r}")


class Channel(Generic[T]):
    """A bounded channel between threads (``kind="thread"``) or processes (``kind="process"``).

    ``Channel(maxsize)`` makes the in-memory kind; ``Channel(maxsize, kind="process")``
    one that can be handed to child processes (as an argument of
    ``multiprocessing.Process``, like ``multiprocessing.Queue``).
    """

    maxsize: int
    kind: str

    def __new__(cls, maxsize: int = 1, kind: str = "thread", **kwargs: Any) -> Channel[T]:
        if cls is Channel:
            cls = _channel_class(kind)
        return super().__new__(cls)

    # -- the contract (every kind implements all of it; the class itself is not
    # abstract for type checkers, so that ``Channel(3)`` type-checks) -----------

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Put one item; wait for room unless ``block=False`` (then ``queue.Full``)."""
        raise NotImplementedError

    def put_many(
        self, items: Iterable[T], block: bool = True, timeout: float | None = None
    ) -> None:
        """Put every item, in order, waiting for room as needed.

        A call with more items than ``maxsize`` puts them piece by piece as room
        appears. If it gives up (``block=False`` or the timeout) it raises
        :class:`queue.Full` whose ``put_count`` says how many did go in.
        """
        raise NotImplementedError

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Take one item; wait for one unless ``block=False`` (then ``queue.Empty``)."""
        raise NotImplementedError

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list[T]:
        """Take between 1 and ``max_items`` items: wait for the first, not for the rest."""
        raise NotImplementedError

    def close(self) -> None:
        """End the stream. Idempotent. Items already in the channel can still be taken."""
        raise NotImplementedError

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
        raise NotImplementedError

    def qsize(self) -> int:
        """Items waiting now (a snapshot: it may change at once)."""
        raise NotImplementedError

    def stats(self) -> ChannelStats:
        """A snapshot of size, bound and counters."""
        raise NotImplementedError

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return self.qsize() >= self.maxsize

    def __repr__(self) -> str:
        s = self.stats()
        state = " closed" if s.closed else ""
        return f"<{type(self).__name__} {s.size}/{s.maxsize}{state}>"
