"""Shared-memory channel between processes (and between threads of each of them).

Memory
======

One anonymous shared mapping (``os.memfd_create`` + ``mmap``: it has no name in
``/dev/shm``, so it goes away with the last process that maps it) holds::

    offset 0     control block: int64 slots, the ``_HEAD`` ... ``_R_WAITING`` constants
    offset 512   the pickled exception of ``_fail`` (8-byte length, then the pickle)
    offset 4096  the ring: ``buffer_bytes`` bytes

The ring is a byte stream. ``head`` and ``tail`` are stream positions that only
grow (position ``p`` lives at ring offset ``p % buffer_bytes``): ``[head, tail)``
is written and not yet taken, and ``0 <= tail - head <= buffer_bytes``. Each item
is one record, an 8-byte length ``n`` and then ``n`` bytes of pickle (protocol 5);
a record may wrap around the end of the ring. Records are taken in stream order.

``count`` is the number of items in the channel, which is what ``maxsize`` bounds.
An item counts from the moment its record is visible (its length is below
``tail``) until the moment its last byte is taken, so ``count`` includes a record
still being streamed in or out. ``put_count``/``get_count`` move when an item is
wholly in/out.

Records larger than the free bytes are streamed: the writer puts in what fits
and waits for room, a reader copies out what is there and waits for more. One
writer at a time holds ``w_active`` and no other writer appends meanwhile; one
reader at a time holds ``r_active`` and no other reader takes meanwhile. While a
reader streams a record, that record's bytes are the only ones in the ring, so
each side only ever waits for the other, and an item of any size gets through a
ring of any size.

Locking rules
=============

* ``_lock`` (a multiprocessing ``Lock`` made from the spawn context, so that the
  channel can be pickled for every start method) guards every control slot and
  every byte of the ring, with two exceptions: ``qsize``/``closed`` read one slot
  without it (a snapshot), and the holder of ``w_active``/``r_active`` copies
  without it. The holder of ``w_active`` owns ``[tail, head + buffer_bytes)``
  (readers stop at ``tail``); the holder of ``r_active`` owns the records it
  takes from ``head`` on (writers stop at ``head + buffer_bytes``). They re-take
  the lock to move ``tail``/``head``. Besides streaming, a put or a get that
  copies at least ``_UNLOCKED_COPY`` bytes does the same, so that one large copy
  does not stall the other side.
* The lock is only held for short, non-blocking work (never while pickling,
  unpickling small items, or sleeping), so waiters spin on it briefly before
  sleeping.
* Waiting uses one semaphore per reason plus a waiter count in the control
  block: a waiter adds itself to the count under the lock, then releases the
  lock and sleeps on the semaphore; a waker, under the lock, takes one waiter
  off the count per ``release()``. So count + tokens in the semaphore = waiters
  registered, at all times: no wake-up is lost between a waiter's unlock and its
  sleep, and a put or get that wakes no one makes no system call. A waiter
  re-checks its condition after waking (a spare token only costs a spurious
  wake-up). Waking one getter or putter passes the turn: whoever runs next wakes
  another if the condition still holds.
* A writer may withdraw a record it streams (on ``close()`` or its timeout) only
  while no reader has taken the record's length (``head <= start``); once one
  has, both sides finish the record whatever the deadline or ``close()``. A put
  whose copy ends after ``close()`` raises ``Closed`` and leaves nothing behind.

The semaphores have names in ``/dev/shm`` (``sem.mp-*``) that multiprocessing
unlinks when the channel is garbage collected in the process that made it, or
when that process exits. A process that unpickles the channel opens them by
name, so keep the channel alive until the children have started, as with
``multiprocessing.Queue``.
"""

from __future__ import annotations

import mmap
import os
import pickle
import queue
import struct
import tempfile
import time
import weakref
from bisect import bisect_right
from multiprocessing import get_context
from multiprocessing.context import assert_spawning
from multiprocessing.reduction import DupFd
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import Closed
from ._base import Channel, ChannelStats, Full, check_max_items, check_maxsize, check_timeout

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from multiprocessing.synchronize import Lock, Semaphore

T = TypeVar("T")

__all__ = ["ProcessChannel"]

# -- control block slots (int64) -------------------------------------------------
_HEAD = 0  # stream position of the first unread byte
_TAIL = 1  # stream position after the last written byte
_COUNT = 2  # items in the channel, including one being written or read in pieces
_MAXSIZE = 3
_CLOSED = 4
_FAILED = 5  # _fail() was called; the exception is at _ERROR_AT
_PUTS = 6
_GETS = 7
_GET_WAITERS = 8  # getters registered on _get_sem and not yet woken
_PUT_WAITERS = 9  # putters registered on _put_sem and not yet woken
_W_ACTIVE = 10  # a writer is streaming a record (no other writer may append)
_W_WAITING = 11  # that writer is registered on _w_sem (0 or 1)
_R_ACTIVE = 12  # a reader is streaming a record (no other reader may take)
_R_WAITING = 13  # that reader is registered on _r_sem (0 or 1)
_SLOTS = 14

_ERROR_AT = 512
_RING_AT = 4096

_LEN = struct.Struct("<Q")
_HDR = _LEN.size
# put_many frames pickles of up to _INLINE_MAX bytes back to back in runs of about
# _RUN_BYTES, each written with one copy; larger pickles go in one by one.
_INLINE_MAX = 16 * 1024
_RUN_BYTES = 64 * 1024
# Transfers of at least this many bytes are copied without holding the lock.
_UNLOCKED_COPY = 64 * 1024
_MIN_BUFFER = 64
_SPIN = 100  # non-blocking tries before a blocking acquire of the lock
_FAIL_WAIT = 5.0  # seconds: see _fail
DEFAULT_BUFFER_BYTES = 1 << 20

_spawn = get_context("spawn")


def _acquire(lock: Lock) -> None:
    """Take ``lock``, spinning a little first: it is held for about a microsecond,
    much less than a sleep and a wake-up cost."""
    acquire = lock.acquire
    for _ in range(_SPIN):
        if acquire(False):
            return
    acquire()


def _deadline(block: bool, timeout: float | None) -> float | None:
    return None if timeout is None or not block else time.monotonic() + timeout


def _shared_fd(nbytes: int) -> int:
    """A file descriptor of ``nbytes`` of zeroed memory that no file name refers to."""
    try:
        fd = os.memfd_create("conveyor-channel", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux, or an old kernel
        fd, path = tempfile.mkstemp(prefix="conveyor-channel-")
        os.unlink(path)
    try:
        os.ftruncate(fd, nbytes)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_buffer_bytes(buffer_bytes: object) -> int:
    if isinstance(buffer_bytes, bool) or not isinstance(buffer_bytes, int):
        raise TypeError(f"buffer_bytes must be an int, got {buffer_bytes!r}")
    if buffer_bytes < _MIN_BUFFER:
        raise ValueError(f"buffer_bytes must be >= {_MIN_BUFFER}, got {buffer_bytes}")
    return buffer_bytes


class ProcessChannel(Channel[T]):
    """A bounded channel between processes; see :class:`conveyor.Channel`.

    Pass it to child processes as an argument of ``multiprocessing.Process``
    (any start method). Items are pickled; ``buffer_bytes`` is the size of the
    shared ring, which limits how many bytes wait in the channel, not how large
    an item may be (larger items are streamed through it).

    For ``block=False`` and timeouts, the channel is also full while its ring has
    no room for the item (or while another writer streams a large item), and also
    empty while another reader streams a large item out. A get that finds at the
    head an item whose writer is still streaming it in takes it, waiting for the
    rest of its bytes whatever ``block`` and ``timeout`` say (the writer has them
    in hand).

    ``put_many`` pickles its items a run at a time as they go in, so an item that
    cannot be pickled raises after the items before it went in. Items are
    unpickled by the getter; one that cannot be unpickled there is lost and its
    error raised.

    Like ``multiprocessing.Queue``, it can only be pickled while a process is being
    started, and a process that dies while it holds the channel's lock (killed in
    the middle of a put or get) leaves it unusable until ``_fail``.
    """

    kind = "process"

    def __init__(
        self,
        maxsize: int = 1,
        kind: str = "process",
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        maxsize = check_maxsize(maxsize)
        size = _check_buffer_bytes(buffer_bytes)
        fd = _shared_fd(_RING_AT + size)
        try:
            self._attach(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._ctl[_MAXSIZE] = maxsize
        self._lock: Lock = _spawn.Lock()
        self._get_sem: Semaphore = _spawn.Semaphore(0)
        self._put_sem: Semaphore = _spawn.Semaphore(0)
        self._w_sem: Semaphore = _spawn.Semaphore(0)
        self._r_sem: Semaphore = _spawn.Semaphore(0)

    def _attach(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._error: BaseException | None = None
        mem = mmap.mmap(fd, _RING_AT + size)
        view = memoryview(mem)
        self._ctl = view[: _SLOTS * 8].cast("q")
        self._ring = view[_RING_AT:]
        self._error_area = view[_ERROR_AT:_RING_AT]
        weakref.finalize(self, os.close, fd)

    # -- pickling: for multiprocessing.Process arguments -----------------------

    def __getstate__(self) -> dict[str, Any]:
        assert_spawning(self)
        return {
            "fd": DupFd(self._fd),
            "size": self._size,
            "sems": (self._lock, self._get_sem, self._put_sem, self._w_sem, self._r_sem),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._attach(state["fd"].detach(), state["size"])
        self._lock, self._get_sem, self._put_sem, self._w_sem, self._r_sem = state["sems"]

    # -- waiting ----------------------------------------------------------------

    def _wait(self, sem: Semaphore, slot: int, deadline: float | None) -> None:
        """Sleep until woken through ``sem`` or the deadline; called and returns with the lock."""
        ctl = self._ctl
        lock = self._lock
        ctl[slot] += 1
        lock.release()
        woken = False
        try:
            if deadline is None:
                woken = sem.acquire()
            else:
                left = deadline - time.monotonic()
                woken = left > 0 and sem.acquire(True, left)
        except BaseException:
            _acquire(lock)
            if not sem.acquire(False):
                ctl[slot] -= 1
            # We may have eaten another waiter's token unaccounted: wake them all.
            self._wake_all(sem, slot)
            raise
        _acquire(lock)
        if not woken and not sem.acquire(False):
            # Not woken: take ourselves off the count. (A token posted after the
            # timeout was counted for one of the waiters; taking it stands for that.)
            ctl[slot] -= 1

    def _wake_one(self, sem: Semaphore, slot: int) -> None:
        ctl = self._ctl
        if ctl[slot] > 0:
            ctl[slot] -= 1
            sem.release()

    def _wake_all(self, sem: Semaphore, slot: int) -> None:
        ctl = self._ctl
        n = ctl[slot]
        ctl[slot] = 0
        for _ in range(n):
            sem.release()

    def _wake_getters(self) -> None:
        ctl = self._ctl
        if ctl[_GET_WAITERS]:
            if ctl[_COUNT] == 0 and (ctl[_CLOSED] or ctl[_FAILED]):
                self._wake_all(self._get_sem, _GET_WAITERS)
            elif ctl[_COUNT] and not ctl[_R_ACTIVE]:
                self._wake_one(self._get_sem, _GET_WAITERS)

    def _wake_putters(self) -> None:
        ctl = self._ctl
        if ctl[_PUT_WAITERS]:
            if ctl[_CLOSED] or ctl[_FAILED]:
                self._wake_all(self._put_sem, _PUT_WAITERS)
            elif self._may_put():
                self._wake_one(self._put_sem, _PUT_WAITERS)

    def _may_put(self) -> bool:
        ctl = self._ctl
        return (
            ctl[_COUNT] < ctl[_MAXSIZE]
            and not ctl[_W_ACTIVE]
            and self._size - (ctl[_TAIL] - ctl[_HEAD]) >= _HDR
        )

    # -- the ring -----------------------------------------------------------------

    def _write(self, pos: int, data: bytes | bytearray | memoryview) -> None:
        size = self._size
        off = pos % size
        n = len(data)
        if off + n <= size:
            self._ring[off : off + n] = data
        else:
            first = size - off
            view = memoryview(data)
            self._ring[off:size] = view[:first]
            self._ring[: n - first] = view[first:]

    def _read(self, pos: int, n: int) -> bytes | bytearray:
        size = self._size
        off = pos % size
        if off + n <= size:
            return self._ring[off : off + n].tobytes()
        first = size - off
        out = bytearray(n)
        out[:first] = self._ring[off:size]
        out[first:] = self._ring[: n - first]
        return out

    def _read_into(self, pos: int, out: memoryview) -> None:
        size = self._size
        off = pos % size
        n = len(out)
        if off + n <= size:
            out[:] = self._ring[off : off + n]
        else:
            first = size - off
            out[:first] = self._ring[off:size]
            out[first:] = self._ring[: n - first]

    def _read_len(self, pos: int) -> int:
        off = pos % self._size
        if off + _HDR <= self._size:
            n: int = _LEN.unpack_from(self._ring, off)[0]
        else:
            n = _LEN.unpack(self._read(pos, _HDR))[0]
        return n

    # -- put side -------------------------------------------------------------------

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        deadline = _deadline(block, check_timeout(timeout))
        data = pickle.dumps(item, 5)
        _acquire(self._lock)
        try:
            self._put_one(data, block, deadline, 0)
            self._wake_putters()
        finally:
            self._lock.release()

    def put_many(
        self, items: Iterable[T], block: bool = True, timeout: float | None = None
    ) -> None:
        # Items are pickled a run at a time, outside the lock, so that a long
        # put_many holds neither the lock nor a pickled copy of everything.
        deadline: float | None = None
        done = -1
        for blob, ends in _pickled_runs(items):
            if done < 0:
                deadline = _deadline(block, check_timeout(timeout))
                done = 0
            _acquire(self._lock)
            try:
                if ends is None:
                    done = self._put_one(blob, block, deadline, done)
                else:
                    done = self._put_run(blob, ends, block, deadline, done)
                self._wake_putters()
            finally:
                self._lock.release()
        if done < 0:  # nothing to put
            _acquire(self._lock)
            try:
                self._check_open()
            finally:
                self._lock.release()

    def _put_one(self, data: bytes, block: bool, deadline: float | None, done: int) -> int:
        """Put one pickle; lock held. Returns ``done + 1``."""
        ctl = self._ctl
        if not self._may_put() or ctl[_CLOSED] or ctl[_FAILED]:
            self._wait_for_room(block, deadline, done)
        n = len(data)
        tail = ctl[_TAIL]
        if _HDR + n > self._size - (tail - ctl[_HEAD]):
            if not block:
                raise Full(done)
            self._stream_in(memoryview(data), deadline, done)
        elif n < _UNLOCKED_COPY:
            self._write(tail, _LEN.pack(n))
            self._write(tail + _HDR, data)
            ctl[_TAIL] = tail + _HDR + n
            ctl[_COUNT] += 1
            ctl[_PUTS] += 1
        else:  # copy without the lock: [tail, tail + _HDR + n) is ours while _W_ACTIVE
            ctl[_W_ACTIVE] = 1
            self._lock.release()
            try:
                self._write(tail, _LEN.pack(n))
                self._write(tail + _HDR, data)
            finally:
                _acquire(self._lock)
                ctl[_W_ACTIVE] = 0
                self._wake_putters()
            # A put that ends after close() must fail: the getters may have drained
            # the channel and gone.
            self._check_open()
            ctl[_TAIL] = tail + _HDR + n
            ctl[_COUNT] += 1
            ctl[_PUTS] += 1
        self._wake_getters()
        return done + 1

    def _put_run(
        self, blob: bytearray, ends: list[int], block: bool, deadline: float | None, done: int
    ) -> int:
        """Put records framed back to back in ``blob``; lock held. Returns the new ``done``."""
        ctl = self._ctl
        view = memoryview(blob)
        i, total, start = 0, len(ends), 0
        while i < total:
            if not self._may_put() or ctl[_CLOSED] or ctl[_FAILED]:
                self._wait_for_room(block, deadline, done)
            tail = ctl[_TAIL]
            free = self._size - (tail - ctl[_HEAD])
            room = ctl[_MAXSIZE] - ctl[_COUNT]
            j = bisect_right(ends, start + free, i, min(total, i + room))
            if j == i:  # the next record does not fit in the free bytes
                if not block:
                    raise Full(done)
                self._stream_in(view[start + _HDR : ends[i]], deadline, done)
                j = i + 1
            else:
                end = ends[j - 1]
                self._write(tail, view[start:end])
                ctl[_TAIL] = tail + end - start
                ctl[_COUNT] += j - i
                ctl[_PUTS] += j - i
            done += j - i
            i, start = j, ends[j - 1]
            self._wake_getters()
        return done

    def _stream_in(self, data: memoryview, deadline: float | None, done: int) -> None:
        """Write a record larger than the free bytes, piece by piece; lock held.

        Entered with the put condition true (so at least the length fits).
        """
        ctl = self._ctl
        n = len(data)
        start = ctl[_TAIL]
        self._write(start, _LEN.pack(n))
        ctl[_TAIL] = start + _HDR
        ctl[_COUNT] += 1
        ctl[_W_ACTIVE] = 1
        self._wake_getters()
        sent = 0
        try:
            while sent < n:
                if ctl[_FAILED]:
                    self._raise_failure()
                tail = ctl[_TAIL]
                free = self._size - (tail - ctl[_HEAD])
                if free:
                    k = min(free, n - sent)
                    # [tail, tail + k) is ours: readers stop at tail, writers wait on _W_ACTIVE.
                    self._lock.release()
                    try:
                        self._write(tail, data[sent : sent + k])
                    finally:
                        _acquire(self._lock)
                    if ctl[_FAILED]:
                        self._raise_failure()
                    ctl[_TAIL] = tail + k
                    sent += k
                    if ctl[_R_WAITING]:
                        self._wake_one(self._r_sem, _R_WAITING)
                elif ctl[_HEAD] > start:  # a reader has begun the record: finish it
                    self._wait(self._w_sem, _W_WAITING, None)
                else:
                    if ctl[_CLOSED]:
                        raise Closed("put() on a closed channel")
                    if deadline is not None and deadline - time.monotonic() <= 0:
                        raise Full(done)
                    self._wait(self._w_sem, _W_WAITING, deadline)
        except BaseException as exc:
            if not ctl[_FAILED]:
                if ctl[_HEAD] <= start:  # no reader has seen it: withdraw the record
                    ctl[_TAIL] = start
                    ctl[_COUNT] -= 1
                else:  # a reader waits for bytes that will never come
                    self._fail_locked(
                        RuntimeError(
                            "a put() was interrupted in the middle of streaming an item "
                            f"({type(exc).__name__}); the channel cannot be used any more"
                        )
                    )
            ctl[_W_ACTIVE] = 0
            self._wake_getters()
            self._wake_putters()
            raise
        ctl[_W_ACTIVE] = 0
        ctl[_PUTS] += 1

    def _wait_for_room(self, block: bool, deadline: float | None, done: int) -> None:
        while True:
            self._check_open()
            if self._may_put():
                return
            if not block:
                raise Full(done)
            if deadline is not None and deadline - time.monotonic() <= 0:
                raise Full(done)
            self._wait(self._put_sem, _PUT_WAITERS, deadline)

    def _check_open(self) -> None:
        if self._ctl[_FAILED]:
            self._raise_failure()
        if self._ctl[_CLOSED]:
            raise Closed("put() on a closed channel")

    # -- get side -------------------------------------------------------------------

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        deadline = _deadline(block, check_timeout(timeout))
        ctl = self._ctl
        _acquire(self._lock)
        try:
            if ctl[_FAILED] or not ctl[_COUNT] or ctl[_R_ACTIVE]:
                self._wait_for_items(block, deadline)
            head = ctl[_HEAD]
            n = self._read_len(head)
            end = head + _HDR + n
            if end > ctl[_TAIL]:
                data: bytes | bytearray = self._stream_out(head, n)
            elif n >= _UNLOCKED_COPY:
                item: T = self._take_unlocked(head, [n])[0]
                return item
            else:
                data = self._read(head + _HDR, n)
                ctl[_HEAD] = end
                ctl[_COUNT] -= 1
                ctl[_GETS] += 1
                self._took()
        finally:
            self._lock.release()
        item = pickle.loads(data)
        return item

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list[T]:
        check_max_items(max_items)
        deadline = _deadline(block, check_timeout(timeout))
        ctl = self._ctl
        _acquire(self._lock)
        try:
            if ctl[_FAILED] or not ctl[_COUNT] or ctl[_R_ACTIVE]:
                self._wait_for_items(block, deadline)
            head = pos = ctl[_HEAD]
            tail = ctl[_TAIL]
            limit = min(max_items, ctl[_COUNT])
            lens: list[int] = []
            read_len = self._read_len
            while len(lens) < limit:
                n = read_len(pos)
                if pos + _HDR + n > tail:  # still being written
                    break
                lens.append(n)
                pos += _HDR + n
            blob: bytes | bytearray
            if not lens:
                blob = self._stream_out(head, read_len(head))
                streamed = True
            elif pos - head >= _UNLOCKED_COPY:
                return self._take_unlocked(head, lens)
            else:
                blob = self._read(head, pos - head)
                streamed = False
                ctl[_HEAD] = pos
                ctl[_COUNT] -= len(lens)
                ctl[_GETS] += len(lens)
                self._took()
        finally:
            self._lock.release()
        if streamed:
            return [pickle.loads(blob)]
        view = memoryview(blob)
        out: list[T] = []
        at = 0
        loads = pickle.loads
        for n in lens:
            at += _HDR
            out.append(loads(view[at : at + n]))
            at += n
        return out

    def _take_unlocked(self, head: int, lens: list[int]) -> list[Any]:
        """Unpickle the complete records at ``head`` straight from the ring; lock held.

        The lock is let go meanwhile: ``[head, ...)`` is ours while _R_ACTIVE.
        """
        ctl = self._ctl
        ring = self._ring
        size = self._size
        loads = pickle.loads
        out: list[Any] = []
        pos = head
        ctl[_R_ACTIVE] = 1
        self._lock.release()
        try:
            for n in lens:
                pos += _HDR
                off = pos % size
                out.append(loads(ring[off : off + n] if off + n <= size else self._read(pos, n)))
                pos += n
        finally:
            _acquire(self._lock)
            ctl[_R_ACTIVE] = 0
            if not ctl[_FAILED]:
                # The records are taken even if one failed to unpickle.
                ctl[_HEAD] = head + _HDR * len(lens) + sum(lens)
                ctl[_COUNT] -= len(lens)
                ctl[_GETS] += len(lens)
                self._took()
        if ctl[_FAILED]:
            self._raise_failure()
        return out

    def _took(self) -> None:
        if self._ctl[_W_WAITING]:
            self._wake_one(self._w_sem, _W_WAITING)
        self._wake_putters()
        self._wake_getters()

    def _stream_out(self, head: int, n: int) -> bytearray:
        """Read the record at ``head`` while its writer still streams it in; lock held."""
        ctl = self._ctl
        ctl[_R_ACTIVE] = 1
        pos = head + _HDR
        ctl[_HEAD] = pos  # from here on the writer cannot withdraw the record
        out = bytearray(n)
        view = memoryview(out)
        got = 0
        try:
            while True:
                if ctl[_W_WAITING]:
                    self._wake_one(self._w_sem, _W_WAITING)
                if ctl[_FAILED]:
                    self._raise_failure()
                if got == n:
                    break
                k = min(ctl[_TAIL] - pos, n - got)
                if k:
                    # [pos, pos + k) is ours: the writer is past it, readers wait on _R_ACTIVE.
                    self._lock.release()
                    try:
                        self._read_into(pos, view[got : got + k])
                    finally:
                        _acquire(self._lock)
                    if ctl[_FAILED]:
                        self._raise_failure()
                    pos += k
                    got += k
                    ctl[_HEAD] = pos
                else:
                    self._wait(self._r_sem, _R_WAITING, None)
        except BaseException as exc:
            if not ctl[_FAILED]:  # the rest of the record would be read as the next one
                self._fail_locked(
                    RuntimeError(
                        "a get() was interrupted in the middle of streaming an item "
                        f"({type(exc).__name__}); the channel cannot be used any more"
                    )
                )
            ctl[_R_ACTIVE] = 0
            raise
        ctl[_R_ACTIVE] = 0
        ctl[_COUNT] -= 1
        ctl[_GETS] += 1
        self._took()
        return out

    def _wait_for_items(self, block: bool, deadline: float | None) -> None:
        ctl = self._ctl
        while True:
            if ctl[_FAILED]:
                self._raise_failure()
            if ctl[_COUNT]:
                if not ctl[_R_ACTIVE]:
                    return
            elif ctl[_CLOSED]:
                raise Closed("the channel is closed and drained")
            if not block:
                raise queue.Empty
            if deadline is not None and deadline - time.monotonic() <= 0:
                raise queue.Empty
            self._wait(self._get_sem, _GET_WAITERS, deadline)

    # -- state ------------------------------------------------------------------------

    def close(self) -> None:
        _acquire(self._lock)
        try:
            self._ctl[_CLOSED] = 1
            self._wake_everyone()
        finally:
            self._lock.release()

    def _wake_everyone(self) -> None:
        self._wake_all(self._get_sem, _GET_WAITERS)
        self._wake_all(self._put_sem, _PUT_WAITERS)
        self._wake_all(self._w_sem, _W_WAITING)
        self._wake_all(self._r_sem, _R_WAITING)

    @property
    def closed(self) -> bool:
        return bool(self._ctl[_CLOSED])

    @property
    def maxsize(self) -> int:
        return self._ctl[_MAXSIZE]

    @maxsize.setter
    def maxsize(self, maxsize: int) -> None:
        self._set_maxsize(maxsize)

    def qsize(self) -> int:
        return self._ctl[_COUNT]

    def stats(self) -> ChannelStats:
        ctl = self._ctl
        _acquire(self._lock)
        try:
            return ChannelStats(
                ctl[_COUNT], ctl[_MAXSIZE], bool(ctl[_CLOSED]), ctl[_PUTS], ctl[_GETS]
            )
        finally:
            self._lock.release()

    # -- engine-only (as MemoryChannel) ------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        """Make every waiting and later call, in every process, raise ``exc``; drop the items.

        The lock is only ever held for a short copy, so if it cannot be had within
        ``_FAIL_WAIT`` seconds the process that holds it is taken to be dead (killed
        in the middle of a put or get): the channel is failed without it, and the
        lock is released on that process's behalf so that waiters can see why.
        """
        if not self._lock.acquire(True, _FAIL_WAIT):
            self._fail_locked(exc)
            try:
                self._lock.release()
            except ValueError:  # it was released meanwhile after all
                pass
            return
        try:
            self._fail_locked(exc)
        finally:
            self._lock.release()

    def _fail_locked(self, exc: BaseException) -> None:
        ctl = self._ctl
        if not ctl[_FAILED]:
            self._error = exc
            area = self._error_area
            try:
                data = pickle.dumps(exc, 5)
            except Exception:
                data = b""
            if not data or _HDR + len(data) > len(area):
                data = pickle.dumps(RuntimeError(f"{type(exc).__name__}: {exc}"[:1000]), 5)
            area[_HDR : _HDR + len(data)] = data
            _LEN.pack_into(area, 0, len(data))
            ctl[_FAILED] = 1
        ctl[_HEAD] = ctl[_TAIL]
        ctl[_COUNT] = 0
        self._wake_everyone()

    def _raise_failure(self) -> None:
        if self._error is None:
            area = self._error_area
            (n,) = _LEN.unpack_from(area, 0)
            try:
                self._error = pickle.loads(area[_HDR : _HDR + n])
            except Exception as exc:
                self._error = RuntimeError(f"the channel failed (cannot unpickle why: {exc})")
        assert self._error is not None
        raise self._error

    def _set_maxsize(self, maxsize: int) -> None:
        check_maxsize(maxsize)
        _acquire(self._lock)
        try:
            grew = maxsize > self._ctl[_MAXSIZE]
            self._ctl[_MAXSIZE] = maxsize
            if grew:
                self._wake_putters()
        finally:
            self._lock.release()


def _pickled_runs(items: Iterable[Any]) -> Iterator[tuple[Any, list[int] | None]]:
    """Pickle items in order: yield ``(framed records, their end offsets)`` for runs
    of small pickles, ``(pickle, None)`` for each large one."""
    buf = bytearray()
    ends: list[int] = []
    dumps = pickle.dumps
    pack = _LEN.pack
    for item in items:
        data = dumps(item, 5)
        if len(data) > _INLINE_MAX:
            if ends:
                yield buf, ends
                buf, ends = bytearray(), []
            yield data, None
        else:
            buf += pack(len(data))
            buf += data
            ends.append(len(buf))
            if len(buf) >= _RUN_BYTES:
                yield buf, ends
                buf, ends = bytearray(), []
    if ends:
        yield buf, ends
