"""Messages between the engine and a worker process.

Each message is one ``Connection.send_bytes`` frame: a tag byte, a fixed header,
then a pickle. The engine side has two threads per worker process (one sends
batches, one receives results), so neither direction can fill up while the other
waits: a worker blocked sending a large result is always being read.

engine → worker::

    INIT     pickled dict: sys.path, cwd, environ, the stage, the worker's identity
    BATCH    seq, pickled list of items
    ACK      the last PARTIAL was passed on; the worker may stream more
    STOP     no more batches: run teardown() and exit

worker → engine::

    READY    setup() done, pid
    FAILED   seq, index, pickled error report (setup/teardown failures use seq=NO_SEQ)
    PARTIAL  seq, pickled chunk of streamed output (then the worker waits for ACK)
    RESULT   seq, items done, seconds of work, failures, retries; pickled rest of the
             output (with failures: the pickled output and a report per failed item)
    BYE      teardown() done; the worker exits next
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from ._serialize import dumps_items, loads

if TYPE_CHECKING:
    import signal as _signal
else:
    import _signal  # the signal module without its enum classes

INIT, BATCH, ACK, STOP = 1, 2, 3, 4
READY, FAILED, PARTIAL, RESULT, BYE = 10, 11, 12, 13, 14

NO_SEQ = 2**64 - 1

TAG = struct.Struct("<B")
SEQ = struct.Struct("<BQ")  # tag, seq
FAIL = struct.Struct("<BQQ")  # tag, seq, index
DONE = struct.Struct("<BQQdII")  # tag, seq, items done, seconds, failures, retries
# With failures, a RESULT's pickle is (pickled results, [(index, report, attempts)]).

# The run's control memory: byte 0 is the stop flag; each worker process has a slot
# where it writes the item it is on and since when (for the timeout watchdog).
CTRL_SIZE = 1 << 20
PROGRESS = struct.Struct("<qd")  # index in the batch (-1: none), monotonic() at its start
_PROGRESS_BASE = 64


def progress_offset(slot: int) -> int:
    return _PROGRESS_BASE + slot * PROGRESS.size


MAX_SLOTS = (CTRL_SIZE - _PROGRESS_BASE) // PROGRESS.size

# On this signal a worker process writes every thread's stack into its stack file (a
# third fd it gets at start), with faulthandler: the stall watchdog's report. A
# real-time signal, which stage code hardly ever uses; faulthandler answers from the
# signal handler, in C, even while the main thread holds the GIL or waits on a lock.
STACK_SIGNAL = _signal.SIGRTMIN + 6


def error_report(error: BaseException, tb: str, phase: str) -> bytes:
    """Pickle what the engine needs to rebuild an error, even if the exception
    itself cannot be pickled (or unpickled on the other side)."""
    try:
        exc_bytes: bytes | None = dumps_items(error)
    except Exception:
        exc_bytes = None
    return dumps_items(
        {
            "exc": exc_bytes,
            "type": type(error).__qualname__,
            "module": type(error).__module__,
            "message": _safe_str(error),
            "traceback": tb,
            "phase": phase,
        }
    )


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return "<str() of the exception failed>"


def rebuild_error(report: dict[str, Any]) -> BaseException:
    from .._errors import RemoteError, RemoteTraceback

    exc: BaseException | None = None
    if report["exc"] is not None:
        try:
            exc = loads(report["exc"])
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(report["type"], report["message"])
    if report["traceback"]:
        exc.__cause__ = RemoteTraceback(report["traceback"])
    return exc
