"""Shared-memory channel between processes (and between threads of each of them).

Memory
======

One anonymous shared mapping (``os.memfd_create`` + ``mmap``: no name in
``/dev/shm``, so it goes away with the last process that maps it) holds::

    offset 0     the lock: a process-shared robust pthread mutex (see _sync.py)
    offset 128   control block: int64 slots, the ``_HEAD`` ... ``_OP`` constants
    offset 256   two int32 futex words: getters and putters sleep on them
    offset 512   the pickled exception of ``_fail`` (8-byte length, then the pickle)
    offset 4096  the ring: ``buffer_bytes`` bytes (a multiple of 8)

The ring is a byte stream. ``head`` and ``tail`` are stream positions that only
grow (position ``p`` lives at ring offset ``p % buffer_bytes``): ``[head, tail)``
holds whole records, ``0 <= tail - head <= buffer_bytes``. A record is an 8-byte
header (body length, kind, number of out-of-band buffers) and its body, padded to
8 bytes, so a header never wraps around the end of the ring (a body may).
``puts - gets`` is the number of items, which ``maxsize`` bounds; the ring's size
bounds their bytes.

Kinds of record body:

* ``_PICKLE``: a pickle (protocol 5).
* ``_OOB``: a pickle whose buffers went out of band (numpy arrays, ``bytes``,
  ``bytearray``, ``memoryview`` and anything else that pickles with
  ``PickleBuffer``): one int64 per buffer (its length; top bit: read-only), the
  pickle, then the buffers' bytes. Each buffer is copied once in (from the object
  into the ring) and once out (into a fresh ``bytes``/``bytearray`` that the
  unpickled object then uses).
* ``_BATCH``: several small items of one ``put_many``, pickled together as one list
  (pickle's memo then writes and reads each dict key, class name, ... once per batch
  instead of once per item). The body is ``claimed`` (int64), ``count`` (int64), then
  the pickle. A batch record counts as ``count`` items for ``maxsize`` and ``qsize``, and
  getters take its items a few at a time: ``claimed`` tells how many are gone. Only the
  record at ``head`` can be partly claimed; it leaves the ring (``head`` moves past it)
  with its last item. Items join a batch only if they share no mutable object with one
  another (dicts, lists and tuples of them, of numbers, strings and small bytes), so
  that the getter's items are as independent as if each had been pickled alone.
* ``_SEGMENT``: an item whose record is larger than the ring. Its record is
  written to a file of its own in ``/dev/shm`` (``conveyor-<pid>-<random>``,
  ``pid`` being the channel's creator), and the ring carries its name. The getter
  unlinks it as soon as it has opened it. Segments left behind by a process that
  died are unlinked by the creator at exit, or at the next channel made on the
  machine once the creator is gone.

Locking and crashes
===================

The lock guards the control block and every byte of the ring, and is held only
for short, non-blocking work: checking the condition, one copy of whole records
in or out, and the commit. Pickling, unpickling, segment files and sleeping
happen without it.

A process may die at any moment, the lock held or not. Records become visible
only at the commit, which moves ``tail`` (or ``head``) and then the counter
``puts`` (or ``gets``), between ``op = _OP_PUT`` (or ``_OP_GET``) and ``op = 0``.
So a record half-written or half-read by a dead process is never seen: it is
outside ``[head, tail)``. A get that takes some of a batch record's items writes
its ``claimed`` inside the same commit. The lock is robust: the next process to take
it after its owner died is told so, and if ``op`` is set it counts the items between
``head`` and ``tail`` (a batch record's unclaimed ones) to put the counter right and
moves ``head`` past a batch record whose items are all claimed (the only state a
commit can leave half done), then wakes every sleeper. An item half-read by a process that died is
still in the channel for the next getter; one whose commit went through left
with the process that took it, as if that process had died just after its get.

Getters unpickle outside the lock: a get copies the records it took out under the
lock, as a batch record may be released (and written over) by another getter as soon
as the lock is let go. Each channel object keeps the last batch it unpickled (keyed
by the record's stream position, which no other record ever has), so that a getter
taking a batch's items one ``get()`` at a time unpickles it once, not once per item;
a batch shared by getters of several processes is unpickled once in each.

Waiting: a sleeper registers in ``get_waiters``/``put_waiters`` and reads its
futex word under the lock, then lets the lock go and sleeps while the word is
unchanged. A waker changes the word under the lock and wakes: one getter (who
passes the turn on if items remain), every putter (their needs differ). Sleeps
last at most ``_SLICE`` seconds, then the condition is looked at again, so even
a count left wrong by a dead sleeper only costs a spare system call.
"""

from __future__ import annotations

import atexit
import ctypes
import mmap
import os
import pickle
import queue
import struct
import tempfile
import time
import weakref
from bisect import bisect_right
from multiprocessing.context import assert_spawning
from multiprocessing.reduction import DupFd
from multiprocessing.util import Finalize
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .._errors import Closed
from ._base import Channel, ChannelStats, Full, check_max_items, check_maxsize, check_timeout
from ._sync import MUTEX_BYTES, RobustMutex, futex_wait, futex_wake, mutex_lock, mutex_unlock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

T = TypeVar("T")
_Encoded = tuple[int, int, list[Any], int]

__all__ = ["ProcessChannel"]

# -- layout ------------------------------------------------------------------------
_CTL_AT = MUTEX_BYTES
_HEAD = 0  # stream position of the first record
_TAIL = 1  # stream position after the last record
_MAXSIZE = 2
_CLOSED = 3
_FAILED = 4  # _fail() was called; the exception is at _ERROR_AT
_PUTS = 5
_GETS = 6
_GET_WAITERS = 7  # getters asleep (or about to be) on the getters' futex word
_PUT_WAITERS = 8
_OP = 9  # a commit in progress: _OP_PUT or _OP_GET (for the repair after a crash)
_REPAIRS = 10  # times the lock was taken over from a process that died holding it
_SLOTS = 11
_FUTEX_AT = 256  # int32 words: getters' at +0, putters' at +4
_ERROR_AT = 512
_RING_AT = 4096

_OP_PUT = 1
_OP_GET = 2

# -- records -----------------------------------------------------------------------
_U64 = struct.Struct("<Q")
_HDR = 8
_PICKLE = 0
_OOB = 1
_SEGMENT = 2
_BATCH = 3
_LEN_BITS = 48
_LEN_MASK = (1 << _LEN_BITS) - 1
_KIND_SHIFT = _LEN_BITS
_NBUF_SHIFT = 52
_MAX_BUFFERS = (1 << 12) - 1
_READONLY = 1 << 63

# put_many frames pickles of up to _INLINE_MAX bytes back to back in runs of about
# _RUN_BYTES, each run written with one copy; other items go in one by one.
_INLINE_MAX = 16 * 1024
_RUN_BYTES = 64 * 1024
# A container item whose pickle is at least this large has its bytes-like members
# of at least _OOB_PART bytes re-pickled out of band.
_OOB_MIN = 64 * 1024
_OOB_PART = 16 * 1024
# put_many gathers runs of up to _BATCH_ITEMS small items (and at most a quarter of
# the channel's maxsize: getters of a small channel share its items, a batch's are
# visible only once it is whole) into one batch record whose pickle is at most
# _BATCH_BYTES (and a quarter of the ring). An item joins a batch if its pickle is at
# most _BATCH_ITEM_MAX bytes (an upper bound is added up without pickling it) and it
# is made of at most _BATCH_NODES dicts and lists, nested at most _BATCH_DEPTH deep.
_BATCH_ITEMS = 128
_BATCH_BYTES = 32 * 1024
_BATCH_ITEM_MAX = 1024
_BATCH_NODES = 32
_BATCH_DEPTH = 4
_BATCH_AT = 16  # a batch record's body: claimed, count, then the pickle
_NOT_BATCHED: tuple[int, list[Any]] = (
    -1,
    [],
)  # the per-channel cache of the last batch unpickled, when empty
_MIN_BUFFER = 64
_SLICE = 0.5  # seconds: the longest sleep before a sleeper looks again
_SPINS = 200  # looks at the count (about 10 us) before a getter sleeps
_SPIN_MICROSECONDS = 5  # the same in C: how long a getter watches the count
_BUFFER_TYPES = (bytes, bytearray, memoryview)
_PADS = [bytes(k) for k in range(8)]
_SCALARS = (int, float, str, bool, type(None))
_dumps = pickle.dumps
_loads = pickle.loads
DEFAULT_BUFFER_BYTES = 8 << 20

_mutex_lock = mutex_lock
_mutex_unlock = mutex_unlock


def _load_native() -> Any:
    """The C hot paths (``_ring.c``), or None: not built, or ``CONVEYOR_PURE_PYTHON`` set."""
    if os.environ.get("CONVEYOR_PURE_PYTHON"):
        return None
    try:
        from . import _ring  # type: ignore[attr-defined]
    except ImportError:
        return None
    layout = (_ring.CTL_AT, _ring.FUTEX_AT, _ring.RING_AT, _ring.SLOTS, _ring.BATCH)
    if layout != (_CTL_AT, _FUTEX_AT, _RING_AT, _OP + 1, _BATCH) or _ring.MUTEX_SIZE > MUTEX_BYTES:
        return None  # built from another version of this file
    return _ring


_native = _load_native()

_SEGMENT_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
_SEGMENT_PREFIX = "conveyor-"


def _pad(n: int) -> int:
    return (n + 7) & ~7


def _header(n: int, kind: int, nbufs: int) -> int:
    return n | (kind << _KIND_SHIFT) | (nbufs << _NBUF_SHIFT)


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
    return _pad(buffer_bytes)


# -- encoding items ------------------------------------------------------------------


def _as_bytes(buf: Any) -> bytes:
    return buf if type(buf) is bytes else bytes(buf)


def _as_bytearray(buf: Any) -> bytearray:
    return buf if type(buf) is bytearray else bytearray(buf)


def _as_memoryview(buf: Any, fmt: str, shape: tuple[int, ...]) -> memoryview:
    view = memoryview(buf)
    if view.format == fmt and view.shape == shape:
        return view
    return view.cast("B").cast(fmt, shape)  # type: ignore[call-overload,no-any-return]


def _reduce_buffer(obj: Any) -> tuple[Any, tuple[Any, ...]] | None:
    """How to pickle a bytes-like object out of band, or None to leave it to pickle."""
    t = type(obj)
    if t is bytes:
        return _as_bytes, (pickle.PickleBuffer(obj),)
    if t is bytearray:
        return _as_bytearray, (pickle.PickleBuffer(obj),)
    if t is memoryview and obj.c_contiguous:
        return _as_memoryview, (pickle.PickleBuffer(obj), obj.format, obj.shape)
    return None


class _Top:
    """Stands for a top-level bytes-like item, so that it goes out of band."""

    __slots__ = ("reduced",)

    def __init__(self, reduced: tuple[Any, tuple[Any, ...]]) -> None:
        self.reduced = reduced

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.reduced


def _big_buffer(obj: Any) -> bool:
    t = type(obj)
    return (t is bytes or t is bytearray or t is memoryview) and memoryview(obj).nbytes >= _OOB_PART


def _out_of_band(obj: Any) -> Any:
    """``obj``, or what pickles it out of band if it is a large bytes-like object."""
    if _big_buffer(obj):
        reduced = _reduce_buffer(obj)
        if reduced is not None:
            return _Top(reduced)
    return obj


def _members_out_of_band(item: Any) -> Any:
    """A shallow copy of a dict, list or tuple with its large bytes-like members out of
    band, or None. (pickle calls no hook for exact bytes, so they are swapped first.)"""
    t = type(item)
    if t is dict:
        if any(_big_buffer(v) for v in item.values()):
            return {k: _out_of_band(v) for k, v in item.items()}
    elif (t is list or t is tuple) and any(_big_buffer(v) for v in item):
        return t(_out_of_band(v) for v in item)
    return None


def _first_pickle(item: Any, buffer_callback: Callable[[Any], None]) -> bytes | None:
    """The pickle a put tries first, or None for an item that goes out of band whole.

    Scalars and small bytes need no buffer callback; anything else may hand buffers
    to ``buffer_callback``, and then goes in through ``_encode``.
    """
    t = type(item)
    if t in _SCALARS:
        return _dumps(item, 5)
    if t in _BUFFER_TYPES:
        return None if t is memoryview or len(item) >= _OOB_PART else _dumps(item, 5)
    return _dumps(item, 5, buffer_callback=buffer_callback)


def _encode(item: Any, data: bytes | None = None, bufs: list[Any] | None = None) -> _Encoded:
    """``(kind, number of buffers, parts, body length)`` of one item's record body.

    ``data`` and ``bufs`` are the item's pickle and out-of-band buffers if the
    caller already has them.
    """
    wrapped = _out_of_band(item)
    if wrapped is not item:
        item = wrapped
        data = None
    if data is None or bufs is None:
        bufs = []
        data = pickle.dumps(item, 5, buffer_callback=bufs.append)
    if not bufs and len(data) >= _OOB_MIN:
        swapped = _members_out_of_band(item)
        if swapped is not None:
            data = pickle.dumps(swapped, 5, buffer_callback=bufs.append)
    if not bufs:
        return _PICKLE, 0, [data], len(data)
    try:
        raws = [b.raw() for b in bufs]
    except BufferError:  # a buffer that is not contiguous: all in band after all
        raws = []
    if not raws or len(raws) > _MAX_BUFFERS:
        data = pickle.dumps(item, 5)
        return _PICKLE, 0, [data], len(data)
    lens = bytearray(8 * len(raws))
    for i, r in enumerate(raws):
        _U64.pack_into(lens, 8 * i, r.nbytes | (_READONLY if r.readonly else 0))
    parts: list[Any] = [lens, _U64.pack(len(data)), data, *raws]
    return _OOB, len(raws), parts, len(lens) + 8 + len(data) + sum(r.nbytes for r in raws)


# -- segment files for items larger than the ring --------------------------------------

_swept = False
_my_segments: set[int] = set()  # creators whose segments are unlinked at exit


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_dead_segments() -> None:
    """Unlink segments whose channel's creator is gone (a crashed run's leftovers)."""
    global _swept
    if _swept:
        return
    _swept = True
    try:
        names = os.listdir(_SEGMENT_DIR)
    except OSError:
        return
    for name in names:
        if not name.startswith(_SEGMENT_PREFIX):
            continue
        pid_text = name[len(_SEGMENT_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            try:
                os.unlink(os.path.join(_SEGMENT_DIR, name))
            except OSError:
                pass


def _unlink_own_segments(creator: int) -> None:
    """At the creator's exit: its channels die with it, so do their segments."""
    if os.getpid() != creator:
        return
    prefix = f"{_SEGMENT_PREFIX}{creator}-"
    try:
        names = os.listdir(_SEGMENT_DIR)
    except OSError:
        return
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(_SEGMENT_DIR, name))
            except OSError:
                pass


def _write_segment(creator: int, header: int, parts: list[Any], n: int) -> bytes:
    """Write a record to a segment file of its own; return its name."""
    name = f"{_SEGMENT_PREFIX}{creator}-{os.urandom(8).hex()}"
    path = os.path.join(_SEGMENT_DIR, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, _HDR + n)
        with mmap.mmap(fd, _HDR + n) as mem:
            _U64.pack_into(mem, 0, header)
            at = _HDR
            for part in parts:
                k = part.nbytes if isinstance(part, memoryview) else len(part)
                mem[at : at + k] = part
                at += k
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return name.encode()


def _read_segment(name: str) -> Any:
    path = os.path.join(_SEGMENT_DIR, name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RuntimeError(
            f"an item's shared-memory segment {path} is gone: it was removed while the "
            "item waited in the channel (did the process that made the channel exit?)"
        ) from None
    try:
        os.unlink(path)
        size = os.fstat(fd).st_size
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mem:
            view = memoryview(mem)
            try:
                (header,) = _U64.unpack_from(view, 0)
                if (header >> _KIND_SHIFT) & 0xF == _PICKLE:
                    return pickle.loads(view[_HDR : _HDR + (header & _LEN_MASK)])
                data, buffers = _decode_parts(view, _HDR, header)
                return pickle.loads(data, buffers=buffers)
            finally:
                view.release()
    finally:
        os.close(fd)


# -- the channel -----------------------------------------------------------------------


class ProcessChannel(Channel[T]):
    """A bounded channel between processes; see :class:`conveyor.Channel`.

    Pass it to child processes as an argument of ``multiprocessing.Process`` (any
    start method), as with ``multiprocessing.Queue``. Items are pickled
    (protocol 5); bytes-like items and numpy arrays travel out of band, copied
    once into shared memory and once out. ``maxsize`` bounds the items waiting,
    ``buffer_bytes`` their bytes: a put waits while the ring has no room for its
    item, and an item larger than the whole ring goes through a shared-memory
    file of its own.

    A process killed at any moment, even holding the channel's lock, neither
    blocks the channel nor corrupts it for the others.

    ``put_many`` pickles its items a run at a time as they go in, so an item that
    cannot be pickled raises after the items before it went in. Runs of small items
    of plain data share a batch record (see the module docstring): a ``put_many``
    with ``block=False`` puts a batch whole or not at all, so ``Full.put_count`` may
    be lower than the room there was. Items are
    unpickled by the getter; one that cannot be unpickled there is lost (with the
    rest of its ``get_many``) and its error raised.
    """

    kind = "process"
    # the C hot paths when they are built (tests turn them off to run the Python ones)
    _use_native: ClassVar[bool] = True

    def __init__(
        self,
        maxsize: int = 1,
        kind: str = "process",
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        maxsize = check_maxsize(maxsize)
        size = _check_buffer_bytes(buffer_bytes)
        _sweep_dead_segments()
        fd = _shared_fd(_RING_AT + size)
        try:
            self._attach(fd, size, os.getpid(), self._use_native)
            RobustMutex.initialise(self._base)
        except BaseException:
            os.close(fd)
            raise
        self._ctl[_MAXSIZE] = maxsize
        if self._creator not in _my_segments:
            _my_segments.add(self._creator)
            atexit.register(_unlink_own_segments, self._creator)
            # multiprocessing's children leave through os._exit, after its finalizers
            Finalize(None, _unlink_own_segments, args=(self._creator,), exitpriority=0)

    def _attach(self, fd: int, size: int, creator: int, native: bool) -> None:
        self._c = _native if native else None
        self._fd = fd
        self._size = size
        self._creator = creator
        self._error: BaseException | None = None
        mem = mmap.mmap(fd, _RING_AT + size)
        self._anchor = ctypes.c_char.from_buffer(mem)
        self._base = ctypes.addressof(self._anchor)
        view = memoryview(mem)
        self._ctl = view[_CTL_AT : _CTL_AT + _SLOTS * 8].cast("q")
        self._futex = view[_FUTEX_AT : _FUTEX_AT + 8].cast("i")
        self._get_word = self._base + _FUTEX_AT
        self._put_word = self._base + _FUTEX_AT + 4
        self._ring = view[_RING_AT:]
        self._error_area = view[_ERROR_AT:_RING_AT]
        self._mutex = RobustMutex(self._base, self._repair)
        self._after_lock = self._mutex.after_lock
        self._inline_max = min(_INLINE_MAX, size - 2 * _HDR)
        self._batch_bytes = min(_BATCH_BYTES, size // 4)
        # [(stream position, items)] of the last batch record this object unpickled
        # and did not finish (taken items set to None)
        self._cache: list[tuple[int, list[Any]]] = [_NOT_BATCHED]
        weakref.finalize(self, os.close, fd)

    # -- pickling: for multiprocessing.Process arguments -----------------------

    def __getstate__(self) -> dict[str, Any]:
        assert_spawning(self)
        return {
            "fd": DupFd(self._fd),
            "size": self._size,
            "creator": self._creator,
            "native": self._c is not None,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._attach(state["fd"].detach(), state["size"], state["creator"], state["native"])

    # -- crash repair -------------------------------------------------------------

    def _repair(self) -> None:
        """The lock's owner died holding it (lock held): finish or undo its commit."""
        ctl = self._ctl
        ctl[_REPAIRS] += 1
        op = ctl[_OP]
        if op:
            head = ctl[_HEAD]
            for at, header in self._records(head, ctl[_TAIL]):
                if header >> _KIND_SHIFT != _BATCH or self._claimed(at) < self._count(at):
                    break
                head = at + _HDR + _pad(header & _LEN_MASK)  # all claimed: release it
            ctl[_HEAD] = head
            items = self._count_items(head, ctl[_TAIL])
            if op == _OP_PUT:
                ctl[_PUTS] = ctl[_GETS] + items
            else:
                ctl[_GETS] = ctl[_PUTS] - items
            ctl[_OP] = 0
        self._wake_everyone()

    def _records(self, pos: int, tail: int) -> Iterator[tuple[int, int]]:
        """``(position, header)`` of each record from ``pos`` on, while before ``tail``."""
        ring, size = self._ring, self._size
        while pos < tail:
            (header,) = _U64.unpack_from(ring, pos % size)
            yield pos, header
            pos += _HDR + _pad(header & _LEN_MASK)

    def _claimed(self, pos: int) -> int:
        """How many items of the batch record at ``pos`` are taken."""
        return int(_U64.unpack_from(self._ring, (pos + _HDR) % self._size)[0])

    def _count(self, pos: int) -> int:
        """How many items the batch record at ``pos`` holds."""
        return int(_U64.unpack_from(self._ring, (pos + _HDR + 8) % self._size)[0])

    def _count_items(self, pos: int, tail: int) -> int:
        count, end = 0, pos
        for at, header in self._records(pos, tail):
            if header >> _KIND_SHIFT == _BATCH:
                count += self._count(at) - self._claimed(at)
            else:
                count += 1
            end = at + _HDR + _pad(header & _LEN_MASK)
        if end != tail:  # cannot happen unless the memory was written by someone else
            self._fail_locked(RuntimeError("the channel's shared memory is corrupt"))
        return count

    # -- waiting ----------------------------------------------------------------

    def _sleep(self, slot: int, index: int, deadline: float | None) -> None:
        """Sleep on futex word ``index`` (0: getters', 1: putters') until woken or the
        deadline; called and returns with the lock."""
        ctl = self._ctl
        ctl[slot] += 1
        word = self._base + _FUTEX_AT + 4 * index
        seen = self._futex[index]
        self._mutex.release()
        try:
            if deadline is None:
                futex_wait(word, seen, _SLICE)
            else:
                left = deadline - time.monotonic()
                if left > 0:
                    futex_wait(word, seen, min(left, _SLICE))
        finally:
            self._mutex.acquire()
            ctl[slot] -= 1

    def _wake_getter(self) -> None:
        if self._ctl[_GET_WAITERS] > 0:
            futex = self._futex
            futex[0] = (futex[0] + 1) & 0x3FFFFFFF
            futex_wake(self._get_word, 1)

    def _wake_putters(self) -> None:
        if self._ctl[_PUT_WAITERS] > 0:
            futex = self._futex
            futex[1] = (futex[1] + 1) & 0x3FFFFFFF
            futex_wake(self._put_word)

    def _wake_everyone(self) -> None:
        futex = self._futex
        futex[0] = (futex[0] + 1) & 0x3FFFFFFF
        futex[1] = (futex[1] + 1) & 0x3FFFFFFF
        futex_wake(self._get_word)
        futex_wake(self._put_word)

    # -- the ring -------------------------------------------------------------------

    def _write(self, pos: int, data: Any) -> int:
        size = self._size
        off = pos % size
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if off + n <= size:
            self._ring[off : off + n] = data
        else:
            first = size - off
            view = memoryview(data).cast("B")
            self._ring[off:size] = view[:first]
            self._ring[: n - first] = view[first:]
        return pos + n

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

    def _read_record(self, pos: int, header: int) -> Any:
        """What a get needs to finish outside the lock, from the record at ``pos``."""
        n = header & _LEN_MASK
        kind = (header >> _KIND_SHIFT) & 0xF
        if kind == _PICKLE:
            return self._read(pos + _HDR, n)
        if kind == _SEGMENT:
            return _SegmentRef(self._read(pos + _HDR, n).decode())
        off = (pos + _HDR) % self._size
        if off + n <= self._size:  # not wrapped: buffers are copied out once
            return _Decoded(_decode_parts(self._ring, off, header))
        blob = self._read(pos + _HDR, n)  # wrapped (rare): one more copy
        return _Decoded(_decode_parts(memoryview(blob), 0, header))

    # -- put ------------------------------------------------------------------------

    def _has_room(self, need: int, items: int) -> bool:
        """Whether a record of ``need`` bytes and ``items`` items may go in. (A batch
        larger than maxsize, which was lowered after the batch was made, goes into an
        empty channel.)"""
        ctl = self._ctl
        waiting = ctl[_PUTS] - ctl[_GETS]
        if waiting + items > ctl[_MAXSIZE] and waiting > 0:
            return False
        return self._size - (ctl[_TAIL] - ctl[_HEAD]) >= need

    def _wait_for_room(
        self, need: int, block: bool, deadline: float | None, done: int, items: int = 1
    ) -> None:
        """Return, lock held, once a record of ``need`` bytes and ``items`` items may go in."""
        ctl = self._ctl
        while True:
            if ctl[_FAILED]:
                self._raise_failure()
            if ctl[_CLOSED]:
                raise Closed("put() on a closed channel")
            if self._has_room(need, items):
                return
            if not block or (deadline is not None and deadline - time.monotonic() <= 0):
                raise Full(done)
            self._sleep(_PUT_WAITERS, 1, deadline)

    def _commit_put(self, tail: int, items: int) -> None:
        ctl = self._ctl
        ctl[_OP] = _OP_PUT
        ctl[_TAIL] = tail
        ctl[_PUTS] += items
        ctl[_OP] = 0
        self._wake_getter()

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        deadline = _deadline(block, check_timeout(timeout))
        bufs: list[Any] = []
        data = _first_pickle(item, bufs.append)
        if data is None or bufs or len(data) > self._inline_max:
            self._put_encoded(_encode(item, data, bufs), block, deadline, 0)
            return
        n = len(data)
        # the common case, inline: a small plain pickle
        need = _HDR + _pad(n)
        ctl = self._ctl
        size = self._size
        address = self._base
        if self._c is not None:
            if not self._c.put(address, size, self._after_lock, data):
                return
            # handed back with the lock held: full, closed or failed
        else:
            rc = _mutex_lock(address)
            if rc:
                self._after_lock(rc)
        try:
            if (
                ctl[_FAILED]
                or ctl[_CLOSED]
                or ctl[_PUTS] - ctl[_GETS] >= ctl[_MAXSIZE]
                or size - (ctl[_TAIL] - ctl[_HEAD]) < need
            ):
                self._wait_for_room(need, block, deadline, 0)
            tail = ctl[_TAIL]
            off = tail % size
            if off + need <= size:
                ring = self._ring
                _U64.pack_into(ring, off, n)
                ring[off + _HDR : off + _HDR + n] = data
            else:
                self._write(self._write(tail, _U64.pack(n)), data)
            self._commit_put(tail + need, 1)
        finally:
            _mutex_unlock(address)

    def _put_encoded(
        self, encoded: _Encoded, block: bool, deadline: float | None, done: int
    ) -> None:
        kind, nbufs, parts, n = encoded
        header = _header(n, kind, nbufs)
        segment: bytes | None = None
        if _HDR + _pad(n) > self._size:
            segment = _write_segment(self._creator, header, parts, n)
            parts = [segment]
            n = len(segment)
            header = _header(n, _SEGMENT, 0)
        need = _HDR + _pad(n)
        mutex = self._mutex
        try:
            mutex.acquire()
            try:
                self._wait_for_room(need, block, deadline, done)
                tail = self._ctl[_TAIL]
                pos = self._write(tail, _U64.pack(header))
                for part in parts:
                    pos = self._write(pos, part)
                self._commit_put(tail + need, 1)
            finally:
                mutex.release()
        except BaseException:
            if segment is not None:
                try:
                    os.unlink(os.path.join(_SEGMENT_DIR, segment.decode()))
                except OSError:
                    pass
            raise

    def put_many(
        self, items: Iterable[T], block: bool = True, timeout: float | None = None
    ) -> None:
        # Items are pickled a run at a time, outside the lock, so that a long
        # put_many holds neither the lock nor a pickled copy of everything.
        deadline: float | None = None
        done = -1
        batch_items = min(_BATCH_ITEMS, self._ctl[_MAXSIZE] // 4)
        runs = _pickled_runs(items, self._inline_max, batch_items, self._batch_bytes, self._c)
        for blob, ends, counts in runs:
            if done < 0:
                deadline = _deadline(block, check_timeout(timeout))
                done = 0
            if ends is None:
                self._put_encoded(blob, block, deadline, done)
                done += 1
            else:
                done = self._put_run(blob, ends, counts, block, deadline, done)
        if done < 0:  # nothing to put
            self._mutex.acquire()
            try:
                self._wait_for_room(0, True, None, 0)
            finally:
                self._mutex.release()

    def _put_run(
        self,
        blob: bytearray,
        ends: list[int],
        counts: list[int],
        block: bool,
        deadline: float | None,
        done: int,
    ) -> int:
        """Put the records framed back to back in ``blob`` (``counts[i]``: the items up
        to the end of record ``i``); returns the new ``done``."""
        ctl = self._ctl
        view = memoryview(blob)
        i, total, start = 0, len(ends), 0
        mutex = self._mutex
        native = self._c
        while i < total:
            before = counts[i - 1] if i else 0
            if native is not None:
                put = native.put_run(
                    self._base, self._size, self._after_lock, blob, ends, counts, start, i
                )
                if put > 0:
                    i += put
                    done += counts[i - 1] - before
                    start = ends[i - 1]
                    continue
                # handed back with the lock held: no room, closed or failed
            else:
                mutex.acquire()
            try:
                self._wait_for_room(ends[i] - start, block, deadline, done, counts[i] - before)
                tail = ctl[_TAIL]
                free = self._size - (tail - ctl[_HEAD])
                count_room = ctl[_MAXSIZE] - (ctl[_PUTS] - ctl[_GETS])
                j = min(
                    bisect_right(ends, start + free, i, total),
                    bisect_right(counts, before + count_room, i, total),
                )
                j = max(j, i + 1)  # an oversized batch into an empty channel
                end = ends[j - 1]
                self._write(tail, view[start:end])
                self._commit_put(tail + end - start, counts[j - 1] - before)
            finally:
                mutex.release()
            done += counts[j - 1] - before
            i, start = j, end
        return done

    # -- get ------------------------------------------------------------------------

    def _wait_for_items(self, block: bool, deadline: float | None) -> None:
        """Return, lock held, once there is an item to take."""
        ctl = self._ctl
        while True:
            if ctl[_FAILED]:
                self._raise_failure()
            if ctl[_PUTS] - ctl[_GETS] > 0:
                return
            if ctl[_CLOSED]:
                raise Closed("the channel is closed and drained")
            if not block or (deadline is not None and deadline - time.monotonic() <= 0):
                raise queue.Empty
            self._sleep(_GET_WAITERS, 0, deadline)

    def _commit_get(self, head: int, items: int, claim: int = -1, claimed: int = 0) -> None:
        """Commit a get: ``head`` moves, ``items`` are gone, and if ``claim`` is the
        position of a batch record (the new head), ``claimed`` of its items are taken."""
        ctl = self._ctl
        ctl[_OP] = _OP_GET
        if claim >= 0:
            _U64.pack_into(self._ring, (claim + _HDR) % self._size, claimed)
        ctl[_HEAD] = head
        ctl[_GETS] += items
        ctl[_OP] = 0
        self._wake_putters()
        if ctl[_PUTS] - ctl[_GETS] > 0:  # pass the turn on
            self._wake_getter()

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        deadline = _deadline(block, check_timeout(timeout))
        ctl = self._ctl
        if block and ctl[_PUTS] - ctl[_GETS] <= 0:
            self._spin()
        size = self._size
        ring = self._ring
        address = self._base
        taken: Any
        if self._c is not None:
            taken = self._c.get(address, size, self._after_lock, _loads, self._cache, _HANDBACK)
            if taken is not _HANDBACK:
                return taken  # type: ignore[no-any-return]
            # handed back with the lock held: empty, failed, or not a plain pickle
        else:
            rc = _mutex_lock(address)
            if rc:
                self._after_lock(rc)
        try:
            if ctl[_PUTS] - ctl[_GETS] <= 0 or ctl[_FAILED]:
                self._wait_for_items(block, deadline)
            head = ctl[_HEAD]
            off = head % size
            (header,) = _U64.unpack_from(ring, off)
            need = _HDR + _pad(header & _LEN_MASK)
            if header <= _LEN_MASK and off + need <= size:  # a plain pickle, not wrapped
                taken = ring[off + _HDR : off + _HDR + header].tobytes()
            elif header >> _KIND_SHIFT == _BATCH:
                cached = self._cache[0]
                taken = self._take_locked(1, cached)
            else:
                taken = self._read_record(head, header)
            if type(taken) is not _Taken:
                self._commit_get(head + need, 1)
        finally:
            _mutex_unlock(address)
        if type(taken) is bytes:
            return _loads(taken)  # type: ignore[no-any-return]
        if type(taken) is _Taken:
            return self._unpickle_taken(taken, cached)[0]  # type: ignore[no-any-return]
        return _finish(taken)  # type: ignore[no-any-return]

    def _take_locked(self, limit: int, cached: tuple[int, list[Any]]) -> _Taken:
        """Take up to ``limit`` items (at least one is there) from the plain and batch
        records at the head, and commit (lock held); they are unpickled later, by
        ``_unpickle_taken``. ``cached`` is the cache as it was before the lock."""
        ring, size = self._ring, self._size
        head = pos = self._ctl[_HEAD]
        tail = self._ctl[_TAIL]
        plan: list[tuple[int, ...]] = []
        left = limit
        claim, claimed = -1, 0
        copy_end = head  # what must be copied out: up to the last record not cached
        while True:
            (header,) = _U64.unpack_from(ring, pos % size)
            kind = header >> _KIND_SHIFT
            n = header & _LEN_MASK
            end = pos + _HDR + _pad(n)
            if kind == _PICKLE:
                plan.append((pos, n))
                left -= 1
                copy_end = end
            elif kind == _BATCH:
                first, count = self._claimed(pos), self._count(pos)
                m = min(left, count - first)
                plan.append((pos, n, first, m, count))
                left -= m
                if cached[0] != pos:
                    copy_end = end
                if first + m < count:  # the record stays, partly claimed
                    claim, claimed = pos, first + m
                    break
            else:
                break  # out of band or a segment: for another get
            pos = end
            if left <= 0 or pos >= tail:
                break
        blob = self._read(head, copy_end - head) if copy_end > head else b""
        self._commit_get(pos, limit - left, claim, claimed)
        return _Taken(head, blob, plan)

    def _unpickle_taken(self, taken: _Taken, cached: tuple[int, list[Any]]) -> list[Any]:
        """The items of a ``_take_locked``, unpickled (lock not held)."""
        view = memoryview(taken.blob)
        head = taken.head
        out: list[Any] = []
        for piece in taken.plan:
            if len(piece) == 2:
                at, n = piece
                out.append(_loads(view[at - head + _HDR : at - head + _HDR + n]))
                continue
            pos, n, first, m, count = piece
            if cached[0] == pos:
                items = cached[1]
            else:
                at = pos - head + _HDR
                items = _loads(view[at + _BATCH_AT : at + n])
            out.extend(items[first : first + m])
            if first + m < count:
                items[first : first + m] = [None] * m  # not kept alive by the cache
                self._cache[0] = (pos, items)
            elif self._cache[0][0] == pos:
                self._cache[0] = _NOT_BATCHED
        return out

    def _spin(self) -> None:
        """Look for an item a little before sleeping: a put that finds no sleeper makes
        no system call, and here a wake-up costs more than a short wait."""
        if self._c is not None:
            self._c.spin(self._base, self._size, self._after_lock, _SPIN_MICROSECONDS)
            return
        ctl = self._ctl
        for _ in range(_SPINS):
            if ctl[_PUTS] - ctl[_GETS] > 0 or ctl[_CLOSED] or ctl[_FAILED]:
                return

    def get_many(self, max_items: int, block: bool = True, timeout: float | None = None) -> list[T]:
        check_max_items(max_items)
        deadline = _deadline(block, check_timeout(timeout))
        ctl = self._ctl
        ring = self._ring
        size = self._size
        mutex = self._mutex
        cached = self._cache[0]
        if self._c is not None:
            taken = self._c.take_run(
                self._base, size, self._after_lock, max_items, _loads, self._cache
            )
            if type(taken) is list:
                return taken
            # handed back with the lock held: empty, failed, or not a plain pickle
        else:
            mutex.acquire()
        try:
            self._wait_for_items(block, deadline)
            cached = self._cache[0]
            head = ctl[_HEAD]
            (header,) = _U64.unpack_from(ring, head % size)
            kind = header >> _KIND_SHIFT
            if kind != _PICKLE and kind != _BATCH:  # on its own
                taken = self._read_record(head, header)
                self._commit_get(head + _HDR + _pad(header & _LEN_MASK), 1)
            else:
                taken = self._take_locked(min(max_items, ctl[_PUTS] - ctl[_GETS]), cached)
        finally:
            mutex.release()
        if type(taken) is _Taken:
            return self._unpickle_taken(taken, cached)
        return [_finish(taken)]

    # -- state ------------------------------------------------------------------------

    def close(self) -> None:
        self._mutex.acquire()
        try:
            self._ctl[_CLOSED] = 1
            self._wake_everyone()
        finally:
            self._mutex.release()

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
        ctl = self._ctl
        return max(0, ctl[_PUTS] - ctl[_GETS])

    def stats(self) -> ChannelStats:
        ctl = self._ctl
        self._mutex.acquire()
        try:
            puts, gets = ctl[_PUTS], ctl[_GETS]
            return ChannelStats(puts - gets, ctl[_MAXSIZE], bool(ctl[_CLOSED]), puts, gets)
        finally:
            self._mutex.release()

    # -- engine-only (as MemoryChannel) ------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        """Make every waiting and later call, in every process, raise ``exc``; drop the items."""
        self._mutex.acquire()
        try:
            self._fail_locked(exc)
        finally:
            self._mutex.release()

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
            _U64.pack_into(area, 0, len(data))
            ctl[_FAILED] = 1
        self._drop_segments(ctl[_HEAD], ctl[_TAIL])
        ctl[_OP] = _OP_GET
        ctl[_HEAD] = ctl[_TAIL]
        ctl[_GETS] = ctl[_PUTS]
        ctl[_OP] = 0
        self._wake_everyone()

    def _drop_segments(self, pos: int, tail: int) -> None:
        for at, header in self._records(pos, tail):
            if (header >> _KIND_SHIFT) & 0xF == _SEGMENT:
                name = self._read(at + _HDR, header & _LEN_MASK)
                try:
                    os.unlink(os.path.join(_SEGMENT_DIR, name.decode()))
                except (OSError, UnicodeDecodeError):
                    pass

    def _raise_failure(self) -> None:
        if self._error is None:
            area = self._error_area
            (n,) = _U64.unpack_from(area, 0)
            try:
                self._error = pickle.loads(area[_HDR : _HDR + n])
            except Exception as exc:
                self._error = RuntimeError(f"the channel failed (cannot unpickle why: {exc})")
        assert self._error is not None
        raise self._error

    def _set_maxsize(self, maxsize: int) -> None:
        check_maxsize(maxsize)
        self._mutex.acquire()
        try:
            grew = maxsize > self._ctl[_MAXSIZE]
            self._ctl[_MAXSIZE] = maxsize
            if grew:
                self._wake_putters()
        finally:
            self._mutex.release()


# -- what a get finishes outside the lock ----------------------------------------------


class _Taken:
    """Items taken from plain and batch records, to unpickle once the lock is let go:
    ``blob``, the records' bytes from stream position ``head`` on; ``plan``, one entry
    per record, ``(position, pickle length)`` for a plain pickle, ``(position, body
    length, first item taken, items taken, items in the record)`` for a batch."""

    __slots__ = ("blob", "head", "plan")

    def __init__(self, head: int, blob: bytes | bytearray, plan: list[tuple[int, ...]]) -> None:
        self.head = head
        self.blob = blob
        self.plan = plan


_HANDBACK = object()  # what the C hot paths return for a case they leave to Python


class _SegmentRef:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


class _Decoded:
    """A record whose bytes were already copied out: ``(pickle, buffers)``."""

    __slots__ = ("buffers", "data")

    def __init__(self, parts: tuple[bytes, list[bytes | bytearray]]) -> None:
        self.data, self.buffers = parts


def _decode_parts(view: memoryview, at: int, header: int) -> tuple[bytes, list[bytes | bytearray]]:
    """Copy an out-of-band record's pickle and buffers out of ``view[at:]``."""
    nbufs = header >> _NBUF_SHIFT
    lens = [_U64.unpack_from(view, at + 8 * i)[0] for i in range(nbufs)]
    at += 8 * nbufs
    (plen,) = _U64.unpack_from(view, at)
    at += 8
    data = view[at : at + plen].tobytes()
    at += plen
    buffers: list[bytes | bytearray] = []
    for word in lens:
        k = word & ~_READONLY
        chunk = view[at : at + k]
        buffers.append(chunk.tobytes() if word & _READONLY else bytearray(chunk))
        at += k
    return data, buffers


def _finish(taken: Any) -> Any:
    t = type(taken)
    if t is _Decoded:
        return pickle.loads(taken.data, buffers=taken.buffers)
    if t is _SegmentRef:
        return _read_segment(taken.name)
    return pickle.loads(taken)


def _batch_cost(obj: Any, mine: dict[int, None], depth: int, budget: int) -> int:
    """The pickle bytes of ``obj`` as a member of a batch (an upper bound, at most
    ``budget``), or -1 if it may not join one. The ids of its dicts and lists go into
    ``mine``."""
    t = type(obj)
    if t is str:
        return 6 + (len(obj) if obj.isascii() else 4 * len(obj))
    if t is int:
        return 5 if -(2**31) <= obj < 2**31 else 10 if obj.bit_length() < 64 else -1
    if t is float:
        return 9
    if t is bool or obj is None:
        return 1
    if t is bytes:
        return 6 + len(obj)
    if depth >= _BATCH_DEPTH or (t is not tuple and t is not list and t is not dict):
        return -1
    if t is not tuple:
        if id(obj) in mine:  # met again inside the item: pickle's memo keeps it shared
            return 5
        if len(mine) >= _BATCH_NODES:
            return -1
        mine[id(obj)] = None
    cost = 4
    for member in obj.items() if t is dict else obj:
        if t is dict:
            key, member = member
            c = _batch_cost(key, mine, depth + 1, budget - cost)
            if c < 0:
                return -1
            cost += c
        c = _batch_cost(member, mine, depth + 1, budget - cost)
        if c < 0:
            return -1
        cost += c
        if cost > budget:
            return -1
    return cost if cost <= budget else -1


def _batch_record(run: list[Any]) -> bytes:
    """A batch record (header and padded body) of the items of ``run``."""
    data = _dumps(run, 5)
    n = _BATCH_AT + len(data)
    return b"".join(
        (_U64.pack(_header(n, _BATCH, 0)), bytes(8), _U64.pack(len(run)), data, _PADS[-n & 7])
    )


def _pickled_runs(
    items: Iterable[Any], inline_max: int, batch_items: int, batch_bytes: int, native: Any
) -> Iterator[tuple[Any, Any, Any]]:
    """Frame small items in runs of records: yield ``(records, their end offsets, the
    number of items up to each end)``, and ``(encoded item, None, None)`` for each item
    that goes in on its own.

    Runs of up to ``batch_items`` small items of plain data share a batch record (a
    pickle of at most ``batch_bytes``); other
    items with a plain pickle of up to ``inline_max`` bytes get a record each; an item
    with out-of-band buffers, or a large one, goes in on its own.
    """
    if native is None:
        yield from _pickled_runs_python(items, inline_max, batch_items, batch_bytes)
        return
    it = iter(items)
    buf = bytearray()
    ends: list[int] = []
    counts: list[int] = []
    bufs: list[Any] = []
    limits = (inline_max, _RUN_BYTES, batch_items, batch_bytes, min(_BATCH_ITEM_MAX, batch_bytes))
    while True:
        got = native.frame(it, _dumps, _first_pickle, bufs, buf, ends, counts, limits)
        if ends:
            yield buf, ends, counts
            buf, ends, counts = bytearray(), [], []
        if type(got) is tuple:  # an item that goes in on its own
            item, data = got
            yield _encode(item, data, bufs[:]), None, None
            bufs.clear()
        elif got:  # no more items
            return


def _pickled_runs_python(
    items: Iterable[Any], inline_max: int, batch_items: int, batch_bytes: int
) -> Iterator[tuple[Any, Any, Any]]:
    buf = bytearray()
    ends: list[int] = []
    counts: list[int] = []  # items up to each record's end
    first_pickle = _first_pickle
    pack = _U64.pack
    pads = _PADS
    bufs: list[Any] = []
    callback = bufs.append
    run: list[Any] = []  # items gathered for a batch record
    seen: dict[int, None] = {}  # ids of their dicts and lists
    run_cost = 0
    item_max = min(_BATCH_ITEM_MAX, batch_bytes)
    done = 0

    def add(data: bytes, items: int) -> None:
        nonlocal done
        done += items
        buf.extend(data)
        ends.append(len(buf))
        counts.append(done)

    def plain(data: bytes) -> bytes:
        n = len(data)
        return pack(n) + data + pads[-n & 7]

    def flush() -> None:
        nonlocal run_cost
        if len(run) > 1:
            record = _batch_record(run)
            if len(record) <= _HDR + _BATCH_AT + batch_bytes + 8:
                add(record, len(run))
            else:  # more than estimated: one record each
                for member in run:
                    add(plain(_dumps(member, 5)), 1)
        elif run:
            add(plain(_dumps(run[0], 5)), 1)
        run.clear()
        seen.clear()
        run_cost = 0

    for item in items:
        if batch_items > 1:
            mine: dict[int, None] = {}
            cost = _batch_cost(item, mine, 0, item_max)
            if 0 <= cost <= item_max:
                if (
                    len(run) >= batch_items
                    or run_cost + cost > batch_bytes - 32  # the list's own opcodes
                    or not seen.keys().isdisjoint(mine)
                ):
                    flush()
                run.append(item)
                seen.update(mine)
                run_cost += cost
                if len(buf) >= _RUN_BYTES:
                    yield buf, ends, counts
                    buf, ends, counts = bytearray(), [], []
                    done = 0
                continue
        flush()
        data = first_pickle(item, callback)
        if data is None or bufs or len(data) > inline_max:
            if ends:
                yield buf, ends, counts
                buf, ends, counts = bytearray(), [], []
                done = 0
            yield _encode(item, data, bufs[:]), None, None
            bufs.clear()
        else:
            add(plain(data), 1)
        if len(buf) >= _RUN_BYTES:
            yield buf, ends, counts
            buf, ends, counts = bytearray(), [], []
            done = 0
    flush()
    if ends:
        yield buf, ends, counts
