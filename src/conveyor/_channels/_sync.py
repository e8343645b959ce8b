"""Process-shared locking and waiting in shared memory, through libc (ctypes).

* :class:`RobustMutex` is a ``pthread_mutex_t`` made process-shared and *robust*:
  when a process (or thread) dies holding it, the kernel hands it to the next
  locker with ``EOWNERDEAD``, which repairs the protected state and goes on. So a
  process killed at any moment never leaves the lock held for ever, unlike a
  ``multiprocessing.Lock`` (a POSIX semaphore), which stays taken.
* :func:`futex_wait` / :func:`futex_wake` sleep on and wake an ``int32`` in shared
  memory. The kernel keeps no state for a sleeper beyond its sleep, so a sleeper
  that dies leaves nothing behind; and ``futex_wait`` only sleeps if the word
  still holds the value the caller saw, so no wake-up is lost between reading the
  word and going to sleep.

Neither needs a name in ``/dev/shm``: both live in the channel's anonymous
mapping. Without ``syscall`` support for the machine's futex number, waiting
falls back to short sleeps (correct, slower to wake).
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["MUTEX_BYTES", "RobustMutex", "futex_wait", "futex_wake", "mutex_lock", "mutex_unlock"]

# Room reserved for one pthread_mutex_t (glibc: 40 bytes on x86-64, 48 on arm64;
# musl: 40); the mutex attributes object is at most 8 bytes everywhere.
MUTEX_BYTES = 128

_libc = ctypes.CDLL(None, use_errno=True)


def _fn(name: str, *argtypes: type) -> Callable[..., int]:
    f = getattr(_libc, name)
    f.argtypes = list(argtypes)
    f.restype = ctypes.c_int
    return f  # type: ignore[no-any-return]


_vp = ctypes.c_void_p
_mutexattr_init = _fn("pthread_mutexattr_init", _vp)
_mutexattr_setpshared = _fn("pthread_mutexattr_setpshared", _vp, ctypes.c_int)
_mutexattr_setrobust = _fn("pthread_mutexattr_setrobust", _vp, ctypes.c_int)
_mutex_init = _fn("pthread_mutex_init", _vp, _vp)
_mutex_lock = _fn("pthread_mutex_lock", _vp)
_mutex_unlock = _fn("pthread_mutex_unlock", _vp)
_mutex_consistent = _fn("pthread_mutex_consistent", _vp)

# for hot paths: mutex_lock(address) returns 0, or a code for RobustMutex.after_lock
mutex_lock = _mutex_lock
mutex_unlock = _mutex_unlock

_PTHREAD_PROCESS_SHARED = 1
_PTHREAD_MUTEX_ROBUST = 1


class MutexBroken(RuntimeError):
    """The shared lock cannot be used any more (``ENOTRECOVERABLE``)."""


class RobustMutex:
    """A process-shared robust mutex at ``address`` (``MUTEX_BYTES`` of shared memory).

    ``on_owner_died`` is called, with the lock held, when the previous owner died
    holding it; it must bring the state the lock protects back to consistency.
    """

    __slots__ = ("_address", "_on_owner_died")

    def __init__(self, address: int, on_owner_died: Callable[[], None]) -> None:
        self._address = address
        self._on_owner_died = on_owner_died

    @staticmethod
    def initialise(address: int) -> None:
        """Make a fresh mutex at ``address`` (once, by the creator of the memory)."""
        attr = ctypes.create_string_buffer(64)
        for rc in (
            _mutexattr_init(attr),
            _mutexattr_setpshared(attr, _PTHREAD_PROCESS_SHARED),
            _mutexattr_setrobust(attr, _PTHREAD_MUTEX_ROBUST),
            _mutex_init(address, attr),
        ):
            if rc:
                raise OSError(rc, f"cannot make a process-shared lock: {os.strerror(rc)}")

    def acquire(self) -> None:
        rc = _mutex_lock(self._address)
        if rc:
            self.after_lock(rc)

    def after_lock(self, rc: int) -> None:
        """Finish a lock call that returned ``rc`` (non-zero): repair, or raise."""
        if rc == errno.EOWNERDEAD:
            try:
                self._on_owner_died()
            finally:
                _mutex_consistent(self._address)
            return
        if rc == errno.ENOTRECOVERABLE:
            raise MutexBroken("a process died holding the channel's lock and it was not repaired")
        raise OSError(rc, os.strerror(rc))

    def release(self) -> None:
        _mutex_unlock(self._address)


# -- futex ------------------------------------------------------------------------

_FUTEX_NR = {
    "x86_64": 202,
    "amd64": 202,
    "aarch64": 98,
    "arm64": 98,
    "riscv64": 98,
    "loongarch64": 98,
    "ppc64le": 221,
    "ppc64": 221,
    "s390x": 238,
    "i386": 240,
    "i686": 240,
    "armv7l": 240,
    "armv6l": 240,
}.get(os.uname().machine)
_FUTEX_WAIT = 0
_FUTEX_WAKE = 1
_INT_MAX = 2**31 - 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# syscall() is variadic; every argument here is a register-sized integer or pointer.
_syscall.argtypes = [
    ctypes.c_long,
    ctypes.c_void_p,
    ctypes.c_long,
    ctypes.c_long,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_long,
]


def futex_wait(address: int, expected: int, timeout: float) -> None:
    """Sleep while the int32 at ``address`` holds ``expected``, at most ``timeout`` s.

    Returns on a wake-up, a timeout, a signal or a changed word alike: the caller
    re-checks its condition.
    """
    if _FUTEX_NR is None:
        time.sleep(min(timeout, 0.001))
        return
    ts = _Timespec(int(timeout), int((timeout % 1.0) * 1e9))
    _syscall(_FUTEX_NR, address, _FUTEX_WAIT, expected, ctypes.addressof(ts), None, 0)


def futex_wake(address: int, n: int = _INT_MAX) -> None:
    """Wake up to ``n`` sleepers on the int32 at ``address`` (all by default)."""
    if _FUTEX_NR is not None:
        _syscall(_FUTEX_NR, address, _FUTEX_WAKE, n, None, None, 0)
