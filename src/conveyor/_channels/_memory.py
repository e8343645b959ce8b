"""In-memory channel between threads of one process.

Items are kept as a deque of chunks (the lists that ``put_many`` received), so a
batch goes in and out with one lock round trip and no per-item Python work.
``_size`` counts items, which is what ``maxsize`` bounds.

A ``put_many`` that finds the channel full waits for room for a good part of what it
has left (half the channel at most), not for one slot: getters taking items one by
one would otherwise wake it for every item, and it would put them back one by one.

The engine uses two operations that are not part of the public contract:
``_fail(exc)`` wakes every waiter and makes every later call raise ``exc`` (a run
that stops drops what is still queued), and ``_set_maxsize(n)`` lets the engine
grow a stage's input as it learns how large its batches should be.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, TypeVar

from .._errors import Closed
from ._base import Channel, ChannelStats, Full, check_max_items, check_maxsize, check_timeout

if TYPE_CHECKING:
    from collections.abc import Iterable

T = TypeVar("T")


_NO_PUTTER = 1 << 62


def _deadline(block: bool, timeout: float | None) -> float | None:
    return None if timeout is None or not block else time.monotonic() + timeout


class MemoryChannel(Channel[T]):
    """A bounded channel between threads; see :class:`conveyor.Channel`."""

    kind = "thread"

    def __init__(self, maxsize: int = 1, kind: str = "thread") -> None:
        self.maxsize = check_maxsize(maxsize)
        # _lock must be held whenever _chunks, _head, _size or the flags change.
        self._lock = threading.Lock()
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._chunks: deque[list[T]] = deque()
        self._head = 0  # items of _chunks[0] already taken
        self._size = 0
        self._closed = False
        self._error: BaseException | None = None
        self._puts = 0
        self._gets = 0
        # threads waiting on each condition: a notify with nobody waiting is skipped
        # (Condition.notify costs a lock probe even then)
        self._getters = 0
        self._putters = 0
        self._want = _NO_PUTTER  # the least room a waiting putter waits for

    # -- put side -----------------------------------------------------------

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        deadline = _deadline(block, check_timeout(timeout))
        with self._lock:
            if self._size >= self.maxsize or self._closed or self._error is not None:
                self._wait_for_room(block, deadline, 0, 1)
            self._chunks.append([item])
            self._size += 1
            self._puts += 1
            if self._getters:
                self._not_empty.notify()

    def put_many(
        self, items: Iterable[T], block: bool = True, timeout: float | None = None
    ) -> None:
        self._put_list(list(items), block, timeout)

    def _put_list(self, items: list[T], block: bool = True, timeout: float | None = None) -> None:
        """put_many of a list that the channel may keep (the caller gives it up)."""
        n = len(items)
        if n == 0:
            with self._lock:
                self._check_open()
            return
        deadline = _deadline(block, check_timeout(timeout))
        done = 0
        with self._lock:
            while done < n:
                room = self.maxsize - self._size
                if room <= 0 or self._closed or self._error is not None:
                    want = min(n - done, max(1, self.maxsize // 2))
                    self._wait_for_room(block, deadline, done, want)
                    continue
                take = min(room, n - done)
                self._chunks.append(items if take == n else items[done : done + take])
                self._size += take
                self._puts += take
                done += take
                if self._getters:
                    self._not_empty.notify()
            if self._putters and self._room_for(self._want):
                self._not_full.notify_all()  # pass the turn on: there is room left

    def _wait_for_room(self, block: bool, deadline: float | None, done: int, want: int) -> None:
        """Return once ``want`` items fit (or fewer, if the channel shrank below that)."""
        while True:
            self._check_open()
            if self._room_for(want):
                return
            if not block:
                raise Full(done)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise Full(done)
            self._putters += 1
            if want < self._want:
                self._want = want
            try:
                self._not_full.wait(left)
            finally:
                self._putters -= 1
                if not self._putters:
                    self._want = _NO_PUTTER

    def _room_for(self, want: int) -> bool:
        """Room for ``want`` items, or for half the channel (which may have shrunk)."""
        room = self.maxsize - self._size
        return room >= want or (room > 0 and room >= self.maxsize // 2)

    def _check_open(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed:
            raise Closed("put() on a closed channel")

    # -- get side -----------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        deadline = _deadline(block, check_timeout(timeout))
        with self._lock:
            if self._size == 0 or self._error is not None:
                self._wait_for_items(block, deadline)
            chunk = self._chunks[0]
            item = chunk[self._head]
            self._head += 1
            if self._head == len(chunk):
                self._chunks.popleft()
                self._head = 0
            self._took(1)
            return item

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list[T]:
        check_max_items(max_items)
        deadline = _deadline(block, check_timeout(timeout))
        with self._lock:
            if self._size == 0 or self._error is not None:
                self._wait_for_items(block, deadline)
            want = min(max_items, self._size)
            chunk = self._chunks[0]
            if self._head == 0 and len(chunk) == want:  # the common case: a whole chunk
                self._chunks.popleft()
                self._took(want)
                return chunk
            out: list[T] = []
            while len(out) < want:
                chunk = self._chunks[0]
                stop = min(len(chunk), self._head + want - len(out))
                out.extend(chunk[self._head : stop])
                if stop == len(chunk):
                    self._chunks.popleft()
                    self._head = 0
                else:
                    self._head = stop
            self._took(want)
            return out

    def _took(self, n: int) -> None:
        self._size -= n
        self._gets += n
        if self._putters and self._room_for(self._want):
            self._not_full.notify_all()
        if self._size and self._getters:
            self._not_empty.notify()  # pass the turn on: items are left

    def _wait_for_items(self, block: bool, deadline: float | None) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if self._size:
                return
            if self._closed:
                raise Closed("the channel is closed and drained")
            if not block:
                raise queue.Empty
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise queue.Empty
            self._getters += 1
            try:
                self._not_empty.wait(left)
            finally:
                self._getters -= 1

    # -- state --------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._not_empty.notify_all()
            self._not_full.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def qsize(self) -> int:
        return self._size

    def stats(self) -> ChannelStats:
        with self._lock:
            return ChannelStats(self._size, self.maxsize, self._closed, self._puts, self._gets)

    # -- engine-only --------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        """Make every waiting and later call raise ``exc``; queued items are dropped."""
        with self._lock:
            if self._error is None:
                self._error = exc
            self._chunks.clear()
            self._head = 0
            self._size = 0
            self._not_empty.notify_all()
            self._not_full.notify_all()

    def _set_maxsize(self, maxsize: int) -> None:
        with self._lock:
            grew = maxsize > self.maxsize
            self.maxsize = maxsize
            if grew:
                self._not_full.notify_all()

    def __getstate__(self) -> object:
        raise TypeError(
            "a thread channel cannot be sent to another process; "
            "use Channel(maxsize, kind='process')"
        )
