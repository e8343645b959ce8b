"""Applying a stage to a batch of items: the inner loop every worker kind shares.

A :class:`Processor` is one worker's instance of a stage. It is made where the
worker runs (a thread of the main process, or a worker process), so a stage class
gets one instance per worker and ``setup()`` runs where ``process()`` will.

Ops:

* ``map``       one result per item
* ``filter``    the item, if ``fn(item)`` is true
* ``flat_map``  every element of the iterable ``fn(item)`` returns, streamed
* ``sink``      nothing; return values are dropped
* ``produce``   the items are producer callables; every element of what they return,
                streamed (this is how ``Pipeline.source(fn1, fn2, ...)`` runs)

Streamed output is handed to ``emit`` in chunks while the batch is still running,
so a generator that yields without end neither waits for its end nor fills memory.
A chunk is passed on when it is full, when its oldest element has waited
``FLUSH_AFTER`` seconds, or at once when the generator is slow (its last element
took longer than that to come): a producer that sleeps between items gets each
item out as soon as it is made.
"""

from __future__ import annotations

import copy
import os
import traceback
from time import monotonic
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "OPS",
    "Abort",
    "ItemFailed",
    "Processor",
    "StopFlag",
    "describe_exception",
    "stream_into",
]

OPS = ("map", "filter", "flat_map", "sink", "produce")
FLUSH_AFTER = 0.005
STREAM_CHUNK = 1024


class StopFlag(Protocol):
    """``flag[0]`` is true once the run is stopping (a list in threads, shared memory in
    worker processes): workers look at it before each item."""

    def __getitem__(self, index: int, /) -> Any: ...


class Abort(BaseException):
    """Raised by ``emit`` to abandon a batch because the run is stopping.

    A BaseException, so that neither the loops here nor user code that catches
    Exception mistake it for the stage's own failure."""


class ItemFailed(Exception):
    """The stage's function raised on ``items[index]``; ``results`` holds what came before."""

    def __init__(self, index: int, error: BaseException, results: list[Any]) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error
        self.results = results
        self.traceback = describe_exception(error)


def describe_exception(error: BaseException) -> str:
    """The traceback text of ``error``, starting at the user's code: the frames of
    conveyor's own loops that called it are left out (all of them are kept when the
    error comes from conveyor itself)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_HERE):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb or error.__traceback__))


_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # the package


class Processor:
    """One worker's instance of a stage."""

    def __init__(self, op: str, target: Any, stop: StopFlag, stream_chunk: int = STREAM_CHUNK):
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}")
        self.op = op
        self.target = target
        self.stop = stop
        self.stream_chunk = stream_chunk
        self._obj: Any = None
        self.fn: Callable[[Any], Any] = target

    def _chunk_size(self) -> int:
        return self.stream_chunk

    # -- lifecycle ----------------------------------------------------------

    def setup(self) -> None:
        """Make this worker's instance of a stage class and call its ``setup()``."""
        target = self.target
        if is_stage_class(target):
            self._obj = target()
        elif is_stage_object(target):
            self._obj = copy.deepcopy(target)
        if self._obj is not None:
            self.fn = self._obj.process
            setup = getattr(self._obj, "setup", None)
            if setup is not None:
                setup()

    def teardown(self) -> None:
        if self._obj is not None:
            teardown = getattr(self._obj, "teardown", None)
            if teardown is not None:
                teardown()

    # -- the inner loops ----------------------------------------------------

    def apply(
        self, items: Sequence[Any], emit: Callable[[list[Any]], None]
    ) -> tuple[list[Any], int]:
        """Run the stage over ``items``; return (results not yet emitted, items processed).

        Stops early, between items, once the stop flag is up. Raises ItemFailed.
        """
        op = self.op
        if op == "map":
            return self._map(items)
        if op == "filter":
            return self._filter(items)
        if op == "sink":
            return self._sink(items)
        return self._flat(items, emit)

    def _map(self, items: Sequence[Any]) -> tuple[list[Any], int]:
        fn, stop = self.fn, self.stop
        out: list[Any] = []
        append = out.append
        try:
            for item in items:
                if stop[0]:
                    break
                append(fn(item))
        except Abort:
            raise
        except BaseException as exc:
            raise ItemFailed(len(out), exc, out) from None
        return out, len(out)

    def _filter(self, items: Sequence[Any]) -> tuple[list[Any], int]:
        fn, stop = self.fn, self.stop
        out: list[Any] = []
        append = out.append
        done = 0
        try:
            for item in items:
                if stop[0]:
                    break
                if fn(item):
                    append(item)
                done += 1
        except Abort:
            raise
        except BaseException as exc:
            raise ItemFailed(done, exc, out) from None
        return out, done

    def _sink(self, items: Sequence[Any]) -> tuple[list[Any], int]:
        fn, stop = self.fn, self.stop
        done = 0
        try:
            for item in items:
                if stop[0]:
                    break
                fn(item)
                done += 1
        except Abort:
            raise
        except BaseException as exc:
            raise ItemFailed(done, exc, []) from None
        return [], done

    def _flat(
        self, items: Sequence[Any], emit: Callable[[list[Any]], None]
    ) -> tuple[list[Any], int]:
        fn, stop, limit = self.fn, self.stop, self.stream_chunk
        produce = self.op == "produce"
        out: list[Any] = []
        done = 0
        try:
            for item in items:
                if stop[0]:
                    break
                got = item() if produce else fn(item)
                if type(got) is list or type(got) is tuple:
                    out.extend(got)
                    if len(out) >= limit:
                        emit(out)
                        out = []
                else:
                    out = stream_into(
                        _iterate(got, item if produce else fn), out, emit, stop, self._chunk_size
                    )
                done += 1
        except Abort:
            raise
        except BaseException as exc:
            raise ItemFailed(done, exc, out) from None
        return out, done


def stream_into(
    it: Iterable[Any],
    out: list[Any],
    emit: Callable[[list[Any]], None],
    stop: StopFlag,
    chunk_size: Callable[[], int],
) -> list[Any]:
    """Append the elements of ``it`` to ``out``, handing chunks to ``emit`` as they
    are due (see the module docstring); return what is left to hand on.
    ``chunk_size()`` is asked again after each chunk (a channel's bound can grow)."""
    limit = chunk_size()
    oldest: float | None = None
    before = monotonic()
    for x in it:
        now = monotonic()
        out.append(x)
        if oldest is None:
            oldest = now
        # a slow element means the next one is likely slow too: do not hold this one
        if now - before >= FLUSH_AFTER or now - oldest >= FLUSH_AFTER or len(out) >= limit:
            emit(out)
            out = []
            oldest = None
            limit = chunk_size()
            now = monotonic()  # the time emit() waited for room is not production time
        before = now
        if stop[0]:
            break
    return out


def _iterate(got: Any, fn: Any) -> Iterable[Any]:
    try:
        it: Iterable[Any] = iter(got)
        return it
    except TypeError:
        name = getattr(fn, "__qualname__", repr(fn))
        raise TypeError(
            f"{name} returned {type(got).__name__}, not an iterable: a flat_map function or a "
            "producer must return an iterable (or be a generator function)"
        ) from None


def is_stage_class(target: Any) -> bool:
    """A class with a ``process`` method: one instance per worker."""
    return isinstance(target, type) and callable(getattr(target, "process", None))


def is_stage_object(target: Any) -> bool:
    """An instance of a stage class (has a ``process`` method), as opposed to a function."""
    return not isinstance(target, type) and callable(getattr(target, "process", None))
