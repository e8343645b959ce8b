"""State that threads and processes update atomically (``conveyor.shared``).

Memory
======

Each :class:`Counter` and :class:`Dict` is one anonymous shared mapping
(``os.memfd_create`` + ``mmap``: no name in ``/dev/shm``, so nothing can be left
behind; the memory goes with the last process that maps it)::

    offset 0     the lock: a process-shared robust pthread mutex (_channels/_sync.py)
    offset 128   a 16-byte random token that names this state (checked on attach)
    offset 160   control block: int64 slots (the ``_C_*`` and ``_D_*`` constants)
    offset 512   the data: a counter's two value slots, or a dict's two halves

Handles
=======

Pickling a Counter or a Dict gives a handle, not a copy: the pickling process's pid,
the number of its file descriptor of the mapping, and the token. Unpickling opens
``/proc/<pid>/fd/<fd>`` (the same memory, as long as the pickling process is alive
and keeps it), maps it and checks the token. Every handle of one state in a process
shares one mapping (``_attached``), so a thread that holds the lock through one
handle holds it through all. Children forked with the state inherit the mapping.

Crashes
=======

Every operation takes the lock, and a process (or thread) killed at any moment, even
holding it, leaves a state the next locker can use, because nothing is changed in
place: the new value is written aside, then one aligned 8-byte store switches to it.

* A counter has two value slots and an index word. ``add`` writes the new value into
  the slot not in use, then flips the index.
* A dict is an open-addressing hash table (buckets of ``(crc, ref)``) over a heap of
  records (key, pickled value). A write appends a record past ``top`` (moved first, so
  a record half written is only garbage), then stores its ``ref`` in the key's bucket:
  that store is the commit. The live and used bucket counts that follow are the only
  state a kill can leave half done; they are changed between ``op = 1`` and ``op = 0``,
  and whoever takes the lock next and sees ``op`` set counts them again.
* The table and heap exist twice (two halves). When the heap or the table is full,
  the live records are copied into the other half, which becomes the active one by
  one store of ``active``: a kill during the copy leaves the old half in use.

The robust mutex tells the next locker when its owner died, and the repair above runs
then too. Work under the lock is short and never waits, except for the function an
``update`` applies, which is the caller's.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import struct
import threading
import weakref
import zlib
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, final, overload

from ._channels._sync import MUTEX_BYTES, RobustMutex, mutex_lock, mutex_unlock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Mapping

__all__ = ["DEFAULT_CAPACITY", "CapacityError", "Counter", "Dict"]

K = TypeVar("K")
V = TypeVar("V")
N = TypeVar("N", int, float)

_TOKEN_AT = MUTEX_BYTES
_TOKEN_BYTES = 16
_CTL_AT = 160
_SLOTS = 32
_DATA_AT = 512

_MAGIC = 0
_KIND = 1
_REPAIRS = 2
# counter
_C_INDEX = 3  # which of the two value slots holds the value
# dict
_D_CAPACITY = 3
_D_BUCKETS = 4
_D_ACTIVE = 5  # which half is in use
_D_OP = 6  # a commit in progress (the counts may be half updated)
_D_COUNT = 7  # + half: live keys
_D_USED = 9  # + half: buckets live or deleted
_D_TOP = 11  # + half: heap bytes used

_MAGIC_VALUE = 0x636F6E7665796F72  # "conveyor"
_INT_COUNTER = 1
_FLOAT_COUNTER = 2
_DICT = 3

_EMPTY = 0
_DELETED = 1
_REF_BASE = 8  # a bucket's ref is the record's heap offset + _REF_BASE
_REC = struct.Struct("<QQ")  # a record: key length, value length; then both, padded
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
DEFAULT_CAPACITY = 1 << 20
_MIN_CAPACITY = 256
_MAX_CAPACITY = 1 << 40

_lock = mutex_lock
_unlock = mutex_unlock


class CapacityError(Exception):
    """A value, or all the keys and values together, do not fit the state's capacity."""


def _pad(n: int) -> int:
    return (n + 7) & ~7


# -- the mapping --------------------------------------------------------------------


def _new_fd(nbytes: int) -> int:
    fd = os.memfd_create("conveyor-shared", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, nbytes)
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Segment:
    """One mapping of a state in this process, shared by all its handles here."""

    __slots__ = (
        "__weakref__",
        "_anchor",
        "base",
        "ctl",
        "fd",
        "mem",
        "mutex",
        "owner",
        "repair",
        "size",
        "token",
        "view",
    )

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self.mem = mmap.mmap(fd, size)
        self._anchor = ctypes.c_char.from_buffer(self.mem)
        self.base = ctypes.addressof(self._anchor)
        self.view = memoryview(self.mem)
        self.ctl = self.view[_CTL_AT : _CTL_AT + 8 * _SLOTS].cast("q")
        self.token = bytes(self.view[_TOKEN_AT : _TOKEN_AT + _TOKEN_BYTES])
        self.owner: int | None = None  # the thread of this process holding the lock
        self.repair: Callable[[], None] = _no_repair
        self.mutex = RobustMutex(self.base, self._owner_died)
        weakref.finalize(self, os.close, fd)

    def _owner_died(self) -> None:
        self.ctl[_REPAIRS] += 1
        self.repair()

    def acquire(self) -> None:
        rc = _lock(self.base)
        if rc:
            self.mutex.after_lock(rc)

    def release(self) -> None:
        _unlock(self.base)


def _no_repair() -> None:
    pass


_attached: weakref.WeakValueDictionary[bytes, _Segment] = weakref.WeakValueDictionary()
_attached_lock = threading.Lock()


def _forget_owners() -> None:
    # a forked child has one thread: no thread of it holds any lock
    for segment in list(_attached.values()):
        segment.owner = None


os.register_at_fork(after_in_child=_forget_owners)


def _create(kind: int, data_bytes: int) -> _Segment:
    fd = _new_fd(_DATA_AT + data_bytes)
    try:
        with mmap.mmap(fd, _DATA_AT) as head:
            head[_TOKEN_AT : _TOKEN_AT + _TOKEN_BYTES] = os.urandom(_TOKEN_BYTES)
            struct.pack_into("<qq", head, _CTL_AT, _MAGIC_VALUE, kind)
        segment = _Segment(fd, _DATA_AT + data_bytes)
        RobustMutex.initialise(segment.base)
    except BaseException:
        os.close(fd)
        raise
    with _attached_lock:
        _attached[segment.token] = segment
    return segment


def _attach(what: str, pid: int, fd: int, token: bytes, kind: int) -> _Segment:
    """The mapping a handle names: this process's own, or opened through /proc."""
    with _attached_lock:
        segment = _attached.get(token)
        if segment is not None:
            return segment
        path = f"/proc/{pid}/fd/{fd}"
        try:
            mine = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RuntimeError(
                f"the shared {what} is gone: process {pid}, which sent it, has exited or "
                "no longer holds it. Keep the object alive in the process that made it "
                "while other processes use it."
            ) from None
        except PermissionError:
            raise RuntimeError(
                f"cannot attach to the shared {what} of process {pid}: this process may "
                f"not open {path} (another user, or a process that is not dumpable)"
            ) from None
        fresh: _Segment | None = None
        try:
            size = os.fstat(mine).st_size
            ok = size > _DATA_AT and os.pread(mine, _TOKEN_BYTES, _TOKEN_AT) == token
            if ok:
                fresh = _Segment(mine, size)
                ok = fresh.ctl[_MAGIC] == _MAGIC_VALUE and fresh.ctl[_KIND] == kind
            if not ok or fresh is None:
                raise RuntimeError(
                    f"the shared {what} is gone: process {pid} no longer holds it (its "
                    "file descriptor now refers to something else)"
                )
        except BaseException:
            if fresh is None:
                os.close(mine)
            raise
        _attached[token] = fresh
        return fresh


def _handle(segment: _Segment) -> tuple[int, int, bytes]:
    return os.getpid(), segment.fd, segment.token


def _dumps(value: Any) -> bytes:
    data = pickle.dumps(value, 5)
    # a worker process does not import the user's script: what __main__ defines goes
    # by value, as items of a pipeline do
    if b"__main__" in data:
        import cloudpickle

        data = bytes(cloudpickle.dumps(value, protocol=5))
    return data


def _check_capacity(capacity: object) -> int:
    if isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int (bytes), got {capacity!r}")
    if not _MIN_CAPACITY <= capacity <= _MAX_CAPACITY:
        raise ValueError(
            f"capacity must be between {_MIN_CAPACITY} and {_MAX_CAPACITY} bytes, got {capacity}"
        )
    return _pad(capacity)


# -- Counter --------------------------------------------------------------------------


@final
class Counter(Generic[N]):
    """A number that threads and processes change atomically: no update is ever lost.

    ``Counter(0)`` holds a 64-bit int, ``Counter(0.0)`` a float. ``add(n)`` adds and
    returns the new value, ``value`` reads it (and sets it), ``update(fn)`` replaces it
    with ``fn(value)``. Pass it to stage functions (as a global, a closure, a
    ``functools.partial`` argument, an attribute of a stage class) or to
    ``multiprocessing.Process``: every process sees the same number.
    """

    __conveyor_process_shared__ = True  # kind="auto": writes reach every process

    __slots__ = ("__weakref__", "_base", "_float", "_segment", "_slots")

    @overload
    def __init__(self: Counter[int], value: int = 0) -> None: ...
    @overload
    def __init__(self: Counter[float], value: float) -> None: ...
    def __init__(self, value: float = 0) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"Counter holds an int or a float, got {type(value).__name__}: use "
                "shared.Dict for other values"
            )
        is_float = isinstance(value, float)
        self._setup(_create(_FLOAT_COUNTER if is_float else _INT_COUNTER, 16), is_float)
        self._slots[0] = self._check(value)

    def _setup(self, segment: _Segment, is_float: bool) -> None:
        self._segment = segment
        self._base = segment.base
        self._float = is_float
        self._slots: Any = segment.view[_DATA_AT : _DATA_AT + 16].cast("d" if is_float else "q")

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _attach_counter, (*_handle(self._segment), self._float)

    def _check(self, value: Any) -> Any:
        if self._float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            raise TypeError(f"a float Counter takes ints and floats, got {value!r}")
        if type(value) is not int and not (isinstance(value, int) and not isinstance(value, bool)):
            raise TypeError(
                f"an int Counter takes ints, got {value!r}: make it with Counter(0.0) "
                "to count in floats"
            )
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise OverflowError(
                f"{value} does not fit the Counter's 64-bit int "
                f"({_INT64_MIN}..{_INT64_MAX}); the value is unchanged"
            )
        return int(value)

    def add(self, n: N = 1) -> N:
        """Add ``n`` (negative to subtract) and return the new value."""
        slots = self._slots
        ctl = self._segment.ctl
        base = self._base
        rc = _lock(base)
        if rc:
            self._segment.mutex.after_lock(rc)
        try:
            i = ctl[_C_INDEX]
            value = slots[i] + n
            if type(value) is not int or not _INT64_MIN <= value <= _INT64_MAX:
                value = self._check(value)
            slots[1 - i] = value
            ctl[_C_INDEX] = 1 - i  # the commit
        finally:
            _unlock(base)
        return cast("N", value)

    def update(self, fn: Callable[[N], N]) -> N:
        """Replace the value with ``fn(value)``, atomically; return the new value.

        ``fn`` runs holding the counter's lock: keep it short.
        """
        segment = self._segment
        segment.acquire()
        try:
            i = segment.ctl[_C_INDEX]
            value = self._check(fn(self._slots[i]))
            self._slots[1 - i] = value
            segment.ctl[_C_INDEX] = 1 - i
        finally:
            segment.release()
        return cast("N", value)

    @property
    def value(self) -> N:
        segment = self._segment
        segment.acquire()
        try:
            return cast("N", self._slots[segment.ctl[_C_INDEX]])
        finally:
            segment.release()

    @value.setter
    def value(self, value: N) -> None:
        new = self._check(value)
        segment = self._segment
        segment.acquire()
        try:
            i = segment.ctl[_C_INDEX]
            self._slots[1 - i] = new
            segment.ctl[_C_INDEX] = 1 - i
        finally:
            segment.release()

    def __repr__(self) -> str:
        return f"<shared.Counter {self.value!r}>"


def _attach_counter(pid: int, fd: int, token: bytes, is_float: bool) -> Counter[Any]:
    counter: Counter[Any] = Counter.__new__(Counter)
    kind = _FLOAT_COUNTER if is_float else _INT_COUNTER
    counter._setup(_attach("Counter", pid, fd, token, kind), is_float)
    return counter


# -- keys ------------------------------------------------------------------------------
# Keys are compared across processes by an encoding of their value (Python's hash() of
# a str differs between processes, and equal tuples may pickle differently), so they
# are limited to types whose value is all there is to them. As in a dict, 1, 1.0 and
# True are one key.

_KEY_TYPES = "str, bytes, int, float, bool, None or tuples of them"
_pack_double = struct.Struct("<d").pack
_unpack_double = struct.Struct("<d").unpack_from


def _encode_key(key: Any, out: bytearray) -> None:
    t = type(key)
    if t is str:
        data = key.encode("utf-8", "surrogatepass")
        out += b"s%d:" % len(data)
        out += data
    elif t is int or t is bool:
        out += b"i%d:" % key
    elif t is float:
        if key.is_integer():
            out += b"i%d:" % int(key)
        else:
            out += b"f"
            out += _pack_double(key)
    elif t is bytes:
        out += b"b%d:" % len(key)
        out += key
    elif key is None:
        out += b"n"
    elif t is tuple:
        out += b"t%d:" % len(key)
        for part in key:
            _encode_key(part, out)
    else:
        raise TypeError(
            f"a shared.Dict key must be {_KEY_TYPES} (keys are compared by value across "
            f"processes), got {t.__name__}: {key!r}"
        )


def _key_bytes(key: Any) -> bytes:
    out = bytearray()
    _encode_key(key, out)
    return bytes(out)


def _decode_key(data: bytes, at: int = 0) -> tuple[Any, int]:
    tag = data[at : at + 1]
    if tag == b"n":
        return None, at + 1
    if tag == b"f":
        return _unpack_double(data, at + 1)[0], at + 9
    colon = data.index(b":", at)
    n = int(data[at + 1 : colon])
    at = colon + 1
    if tag == b"i":
        return n, at
    if tag == b"s":
        return data[at : at + n].decode("utf-8", "surrogatepass"), at + n
    if tag == b"b":
        return data[at : at + n], at + n
    parts = []
    for _ in range(n):
        part, at = _decode_key(data, at)
        parts.append(part)
    return tuple(parts), at


# encodings of recent keys (equal keys encode alike, so 1, 1.0 and True may share one)
_key_cache: dict[Any, tuple[bytes, int]] = {}
_KEY_CACHE_SIZE = 4096


def _slot(crc: int, mask: int) -> int:
    return ((crc * 0x9E3779B1) >> 7) & mask


# -- Dict ------------------------------------------------------------------------------

_MISSING: Any = object()


@final
class Dict(Generic[K, V]):
    """A dict that threads and processes share, whose every operation is atomic.

    ``d[key]``, ``d[key] = value``, ``del d[key]``, ``get``, ``pop``, ``in``, ``len``,
    ``keys()``, ``values()``, ``items()`` and ``to_dict()`` (snapshots), ``clear()``,
    and ``update(key, fn, default=...)``, which replaces a value with ``fn(value)``
    atomically: the read-modify-write that otherwise needs a lock. ``with
    d.locked():`` runs several operations under the dict's lock.

    Keys are str, bytes, int, float, bool, None or tuples of them; values anything
    picklable. Keys and pickled values together take at most ``capacity`` bytes
    (1 MiB by default); a write that does not fit raises :class:`CapacityError`, and
    changes nothing.
    """

    __conveyor_process_shared__ = True  # kind="auto": writes reach every process

    __slots__ = (
        "__weakref__",
        "_capacity",
        "_half",
        "_heaps",
        "_limit",
        "_mask",
        "_segment",
        "_tables",
    )

    def __init__(
        self,
        initial: Mapping[K, V] | Iterable[tuple[K, V]] | None = None,
        *,
        capacity: int = DEFAULT_CAPACITY,
    ) -> None:
        capacity = _check_capacity(capacity)
        buckets = 8
        while buckets < capacity // 16:
            buckets *= 2
        segment = _create(_DICT, 2 * (16 * buckets + capacity))
        segment.ctl[_D_CAPACITY] = capacity
        segment.ctl[_D_BUCKETS] = buckets
        self._setup(segment)
        if initial is not None:
            pairs = initial.items() if hasattr(initial, "items") else initial
            with self.locked():
                for key, value in pairs:
                    self[key] = value

    def _setup(self, segment: _Segment) -> None:
        self._segment = segment
        ctl = segment.ctl
        capacity, buckets = ctl[_D_CAPACITY], ctl[_D_BUCKETS]
        self._capacity = capacity
        self._mask = buckets - 1
        self._limit = buckets * 3 // 4  # used buckets (live or deleted) at most
        half = self._half = 16 * buckets + capacity
        view = segment.view
        self._tables = [
            view[_DATA_AT + h * half : _DATA_AT + h * half + 16 * buckets].cast("q") for h in (0, 1)
        ]
        self._heaps = [
            view[_DATA_AT + h * half + 16 * buckets : _DATA_AT + (h + 1) * half] for h in (0, 1)
        ]
        segment.repair = self._recount

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _attach_dict, _handle(self._segment)

    # -- the lock -------------------------------------------------------------------

    def _acquire(self) -> bool:
        """Take the lock unless this thread holds it; True if it took it."""
        segment = self._segment
        me = threading.get_ident()
        if segment.owner == me:
            return False
        segment.acquire()
        segment.owner = me
        if segment.ctl[_D_OP]:  # a commit was cut short (a KeyboardInterrupt, say)
            self._recount()
        return True

    def _release(self, took: bool) -> None:
        if took:
            segment = self._segment
            segment.owner = None
            segment.release()

    @contextmanager
    def locked(self) -> Iterator[Dict[K, V]]:
        """Hold the dict's lock for the block: other threads and processes wait.

        Each operation in the block is still atomic on its own; a process killed in
        the block leaves the ones it finished done.
        """
        took = self._acquire()
        try:
            yield self
        finally:
            self._release(took)

    def _recount(self) -> None:
        """Put the active half's counts right (lock held), after a cut-short commit."""
        ctl = self._segment.ctl
        a = ctl[_D_ACTIVE]
        table = self._tables[a]
        live = used = 0
        for i in range(1, len(table), 2):
            ref = table[i]
            if ref != _EMPTY:
                used += 1
                if ref != _DELETED:
                    live += 1
        ctl[_D_COUNT + a] = live
        ctl[_D_USED + a] = used
        ctl[_D_OP] = 0

    # -- the table (lock held) --------------------------------------------------------

    def _find(self, a: int, kb: bytes, crc: int) -> tuple[int, int]:
        """(bucket of the key or -1, bucket where it would go) in half ``a``."""
        table, heap, mask = self._tables[a], self._heaps[a], self._mask
        i = _slot(crc, mask)
        free = -1
        n = len(kb)
        while True:
            ref = table[2 * i + 1]
            if ref == _EMPTY:
                return -1, (i if free < 0 else free)
            if ref == _DELETED:
                if free < 0:
                    free = i
            elif table[2 * i] == crc:
                at = ref - _REF_BASE
                klen, _ = _REC.unpack_from(heap, at)
                if klen == n and heap[at + 16 : at + 16 + n] == kb:
                    return i, i
            i = (i + 1) & mask

    def _value_at(self, a: int, i: int) -> memoryview:
        heap = self._heaps[a]
        at = self._tables[a][2 * i + 1] - _REF_BASE
        klen, vlen = _REC.unpack_from(heap, at)
        start = at + 16 + klen
        return heap[start : start + vlen]

    def _record(self, heap: memoryview, at: int, kb: bytes, vb: bytes) -> None:
        _REC.pack_into(heap, at, len(kb), len(vb))
        heap[at + 16 : at + 16 + len(kb)] = kb
        heap[at + 16 + len(kb) : at + 16 + len(kb) + len(vb)] = vb

    def _store(self, kb: bytes, crc: int, vb: bytes) -> None:
        ctl = self._segment.ctl
        need = 16 + _pad(len(kb) + len(vb))
        a = ctl[_D_ACTIVE]
        found, i = self._find(a, kb, crc)
        at = ctl[_D_TOP + a]
        if at + need > self._capacity or (found < 0 and ctl[_D_USED + a] >= self._limit):
            self._compact(a, found, kb, crc, vb)
            return
        ctl[_D_TOP + a] = at + need  # first: a record cut short is garbage, never seen
        self._record(self._heaps[a], at, kb, vb)
        table = self._tables[a]
        ctl[_D_OP] = 1
        fresh = table[2 * i + 1] == _EMPTY
        table[2 * i] = crc
        table[2 * i + 1] = at + _REF_BASE  # the commit
        if found < 0:
            ctl[_D_COUNT + a] += 1
            if fresh:
                ctl[_D_USED + a] += 1
        ctl[_D_OP] = 0

    def _remove(self, a: int, i: int) -> None:
        ctl = self._segment.ctl
        ctl[_D_OP] = 1
        self._tables[a][2 * i + 1] = _DELETED  # the commit
        ctl[_D_COUNT + a] -= 1
        ctl[_D_OP] = 0

    def _zero_table(self, h: int) -> None:
        address = self._segment.base + _DATA_AT + h * self._half
        ctypes.memset(address, 0, self._tables[h].nbytes)

    def _live(self, a: int) -> Iterator[tuple[int, int, int, int]]:
        """(bucket, record offset, key length, value length) of each live key."""
        table, heap = self._tables[a], self._heaps[a]
        for i in range(len(table) // 2):
            ref = table[2 * i + 1]
            if ref > _DELETED:
                at = ref - _REF_BASE
                klen, vlen = _REC.unpack_from(heap, at)
                yield i, at, klen, vlen

    def _compact(self, a: int, replaced: int, kb: bytes, crc: int, vb: bytes) -> None:
        """Write the live records of half ``a`` but bucket ``replaced``, and the new one,
        into the other half, and switch to it (lock held): the copy and the write are
        one commit, so the old record is dropped only when its replacement is in."""
        ctl = self._segment.ctl
        live = [r for r in self._live(a) if r[0] != replaced]
        live_bytes = sum(16 + _pad(klen + vlen) for _, _, klen, vlen in live)
        need = 16 + _pad(len(kb) + len(vb))
        if live_bytes + need > self._capacity or len(live) + 1 > self._limit:
            raise CapacityError(
                f"the shared.Dict is full: its {len(live)} other keys take {live_bytes} of "
                f"its {self._capacity} bytes and this write needs {need} more; make it "
                "with a larger capacity= (bytes)"
            )
        b = 1 - a
        old_heap, old_table = self._heaps[a], self._tables[a]
        heap, table, mask = self._heaps[b], self._tables[b], self._mask
        self._zero_table(b)
        top = 0
        for i, at, klen, vlen in [*live, (-1, -1, len(kb), len(vb))]:
            size = 16 + _pad(klen + vlen)
            if i < 0:
                self._record(heap, top, kb, vb)
                h = crc
            else:
                heap[top : top + size] = old_heap[at : at + size]
                h = old_table[2 * i]
            j = _slot(h, mask)
            while table[2 * j + 1] != _EMPTY:
                j = (j + 1) & mask
            table[2 * j] = h
            table[2 * j + 1] = top + _REF_BASE
            top += size
        ctl[_D_TOP + b] = top
        ctl[_D_COUNT + b] = ctl[_D_USED + b] = len(live) + 1
        ctl[_D_ACTIVE] = b  # the commit

    # -- operations -------------------------------------------------------------------

    def _key(self, key: Any) -> tuple[bytes, int]:
        try:
            return _key_cache[key]
        except (KeyError, TypeError):  # TypeError: unhashable, refused just below
            pass
        kb = _key_bytes(key)
        found = kb, zlib.crc32(kb)
        if len(_key_cache) >= _KEY_CACHE_SIZE:
            _key_cache.clear()
        _key_cache[key] = found
        return found

    def _read(self, key: Any) -> bytes | None:
        kb, crc = self._key(key)
        took = self._acquire()
        try:
            a = self._segment.ctl[_D_ACTIVE]
            i, _ = self._find(a, kb, crc)
            return None if i < 0 else bytes(self._value_at(a, i))
        finally:
            self._release(took)

    def __getitem__(self, key: K) -> V:
        data = self._read(key)
        if data is None:
            raise KeyError(key)
        return cast("V", pickle.loads(data))

    def get(self, key: K, default: V | None = None) -> V | None:
        data = self._read(key)
        return default if data is None else cast("V", pickle.loads(data))

    def __contains__(self, key: object) -> bool:
        kb, crc = self._key(key)
        took = self._acquire()
        try:
            return self._find(self._segment.ctl[_D_ACTIVE], kb, crc)[0] >= 0
        finally:
            self._release(took)

    def __setitem__(self, key: K, value: V) -> None:
        kb, crc = self._key(key)
        vb = _dumps(value)
        self._check_fits(kb, vb)
        took = self._acquire()
        try:
            self._store(kb, crc, vb)
        finally:
            self._release(took)

    def _check_fits(self, kb: bytes, vb: bytes) -> None:
        need = 16 + _pad(len(kb) + len(vb))
        if need > self._capacity:
            raise CapacityError(
                f"a key and its pickled value take {need} bytes, more than the "
                f"shared.Dict's capacity of {self._capacity} bytes; make it with a larger "
                "capacity= (bytes)"
            )

    def update(self, key: K, fn: Callable[[V], V] = _MISSING, default: V = _MISSING) -> V:
        """Replace ``d[key]`` with ``fn(d[key])`` atomically and return the new value.

        A missing key starts from ``default`` (``KeyError`` without one). ``fn`` runs
        holding the dict's lock, so no other update comes between its read and its
        write: keep it short. If it raises, nothing changes.
        """
        if fn is _MISSING:
            raise TypeError(
                "Dict.update(key, fn) replaces one value with fn(value); to set several "
                "keys, assign them under one lock: with d.locked(): d[k1] = v1; d[k2] = v2"
            )
        if not callable(fn):
            raise TypeError(f"Dict.update(key, fn): fn must be callable, got {fn!r}")
        kb, crc = self._key(key)
        took = self._acquire()
        try:
            a = self._segment.ctl[_D_ACTIVE]
            i, _ = self._find(a, kb, crc)
            if i >= 0:
                old = pickle.loads(self._value_at(a, i))
            elif default is not _MISSING:
                old = default
            else:
                raise KeyError(key)
            new = fn(old)
            vb = _dumps(new)
            self._check_fits(kb, vb)
            self._store(kb, crc, vb)
            return new
        finally:
            self._release(took)

    def __delitem__(self, key: K) -> None:
        if self.pop(key, _MISSING) is _MISSING:
            raise KeyError(key)

    def pop(self, key: K, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value (``default``, or ``KeyError``, if absent)."""
        kb, crc = self._key(key)
        took = self._acquire()
        try:
            a = self._segment.ctl[_D_ACTIVE]
            i, _ = self._find(a, kb, crc)
            if i >= 0:
                data = bytes(self._value_at(a, i))
                self._remove(a, i)
        finally:
            self._release(took)
        if i < 0:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return pickle.loads(data)

    def clear(self) -> None:
        took = self._acquire()
        try:
            ctl = self._segment.ctl
            b = 1 - ctl[_D_ACTIVE]
            self._zero_table(b)
            ctl[_D_TOP + b] = ctl[_D_COUNT + b] = ctl[_D_USED + b] = 0
            ctl[_D_ACTIVE] = b  # the commit
        finally:
            self._release(took)

    def __len__(self) -> int:
        took = self._acquire()
        try:
            ctl = self._segment.ctl
            return ctl[_D_COUNT + ctl[_D_ACTIVE]]
        finally:
            self._release(took)

    def _snapshot(self) -> list[tuple[bytes, bytes]]:
        took = self._acquire()
        try:
            a = self._segment.ctl[_D_ACTIVE]
            heap = self._heaps[a]
            return [
                (
                    bytes(heap[at + 16 : at + 16 + klen]),
                    bytes(heap[at + 16 + klen : at + 16 + klen + vlen]),
                )
                for _, at, klen, vlen in self._live(a)
            ]
        finally:
            self._release(took)

    def keys(self) -> list[K]:
        """The keys, as a list taken at one moment."""
        return [_decode_key(kb)[0] for kb, _ in self._snapshot()]

    def values(self) -> list[V]:
        return [pickle.loads(vb) for _, vb in self._snapshot()]

    def items(self) -> list[tuple[K, V]]:
        return [(_decode_key(kb)[0], pickle.loads(vb)) for kb, vb in self._snapshot()]

    def to_dict(self) -> dict[K, V]:
        """A plain dict copy, taken at one moment."""
        return dict(self.items())

    def __iter__(self) -> Iterator[K]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"<shared.Dict {self.to_dict()!r}>"


def _attach_dict(pid: int, fd: int, token: bytes) -> Dict[Any, Any]:
    d: Dict[Any, Any] = Dict.__new__(Dict)
    d._setup(_attach("Dict", pid, fd, token, _DICT))
    return d
