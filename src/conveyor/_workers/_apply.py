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
import time
import traceback
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "OPS",
    "Abort",
    "ItemFailed",
    "ItemPolicy",
    "Outcome",
    "Processor",
    "Progress",
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
    """The stage's function raised on ``items[index]`` (``attempts`` times, retries
    included); ``results`` holds what came before."""

    def __init__(
        self, index: int, error: BaseException, results: list[Any], attempts: int = 1
    ) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error
        self.results = results
        self.attempts = attempts
        self.traceback = describe_exception(error)


@dataclass(frozen=True)
class ItemPolicy:
    """What a worker must know of its stage's error handling."""

    retries: int = 0
    """Re-runs of an item whose function raised, after a pause that doubles each time."""
    backoff: float = 0.1
    """Seconds before the first re-run."""
    skip: bool = False
    """Go on after an item failed for good (on_error is "skip" or a callable)."""
    track: bool = False
    """Report when each item starts (the stage has a timeout)."""

    @property
    def careful(self) -> bool:
        """Whether the per-item loop is needed (the fast loops do none of this)."""
        return self.retries > 0 or self.skip or self.track


class Progress(Protocol):
    """Where a worker says which item it is on, for the timeout watchdog."""

    def begin(self, index: int, attempt: int) -> None: ...

    def end(self) -> None: ...


class Outcome(NamedTuple):
    """What the careful loop returns."""

    results: list[Any]
    """Results not yet emitted."""
    done: int
    """Items processed (failed ones included)."""
    failures: list[ItemFailed]
    sizes: list[int]
    """Results per processed item, to find the item behind a result."""
    reruns: int
    """Retries made."""


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

    def __init__(
        self,
        op: str,
        target: Any,
        stop: StopFlag,
        stream_chunk: int = STREAM_CHUNK,
        policy: ItemPolicy | None = None,
        progress: Progress | None = None,
    ):
        if op not in OPS:
            raise ValueError(f"unknown op {op!r}")
        self.op = op
        self.target = target
        self.stop = stop
        self.stream_chunk = stream_chunk
        self.policy = policy or ItemPolicy()
        self.progress = progress
        self.current_out: list[Any] = []
        self.current_sizes: list[int] = []
        self._reruns = 0
        self._obj: Any = None
        self.fn: Callable[[Any], Any] = target

    def _chunk_size(self) -> int:
        return self.stream_chunk

    # -- lifecycle ----------------------------------------------------------

    def setup(self) -> None:
        """Make this worker's instance of a stage class and call its ``setup()``."""
        self._obj = stage_instance(self.target)
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

    # -- the careful loop: retries, skipping, per-item progress --------------------

    def apply_careful(self, items: Sequence[Any]) -> Outcome:
        """Run the stage over ``items`` item by item, with the stage's retries; a failed
        item is recorded and the batch goes on (``skip``), or ItemFailed is raised.

        Outputs are not streamed: an item's outputs are kept until it succeeds, so
        that a retried item never passes on the outputs of a failed attempt twice.
        """
        fn, stop, progress = self.fn, self.stop, self.progress
        out: list[Any] = []
        sizes: list[int] = []
        # the watchdog reads these to hand a stuck worker's batch over to another
        self.current_out, self.current_sizes = out, sizes
        failures: list[ItemFailed] = []
        self._reruns = 0
        append, extend, size = out.append, out.extend, sizes.append
        mapping = self.op == "map"
        try:
            for index, item in enumerate(items):
                if stop[0]:
                    break
                if progress is not None:
                    progress.begin(index, 1)
                try:
                    if mapping:  # the common case, without a list per item
                        append(fn(item))
                        size(1)
                        continue
                    got = self._outputs(item)
                except Abort:
                    raise
                except BaseException as exc:
                    got = self._again(index, item, exc, out, failures)
                extend(got)
                size(len(got))
        finally:
            if progress is not None:
                progress.end()
        return Outcome(out, len(sizes), failures, sizes, self._reruns)

    def _outputs(self, item: Any) -> list[Any]:
        """The outputs of one item, kept until it succeeds."""
        op, fn = self.op, self.fn
        if op == "map":
            return [fn(item)]
        if op == "filter":
            return [item] if fn(item) else []
        if op == "sink":
            fn(item)
            return []
        if op == "produce":
            return list(_iterate(item(), item))
        return list(_iterate(fn(item), fn))

    def _again(
        self,
        index: int,
        item: Any,
        error: BaseException,
        out: list[Any],
        failures: list[ItemFailed],
    ) -> list[Any]:
        """An item raised: retry it (after a pause that doubles), then give up on it."""
        policy, progress = self.policy, self.progress
        attempt = 1
        while attempt <= policy.retries and not self.stop[0]:
            self._reruns += 1
            if progress is not None:
                progress.end()
            self._pause(policy.backoff * 2 ** (attempt - 1))
            attempt += 1
            if progress is not None:
                progress.begin(index, attempt)
            try:
                return self._outputs(item)
            except Abort:
                raise
            except BaseException as exc:
                error = exc
        failed = ItemFailed(index, error, out, attempt)
        if not policy.skip:
            raise failed from None
        failures.append(failed)
        return []

    def _pause(self, seconds: float) -> None:
        """Sleep before a retry, waking early if the run stops."""
        deadline = monotonic() + seconds
        while not self.stop[0]:
            left = deadline - monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))


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


def stage_instance(target: Any) -> Any:
    """A worker's own instance of a stage class (or copy of a stage object); None for a
    function."""
    if is_stage_class(target):
        return target()
    if is_stage_object(target):
        return copy.deepcopy(target)
    return None


def is_stage_class(target: Any) -> bool:
    """A class with a ``process`` method: one instance per worker."""
    return isinstance(target, type) and callable(getattr(target, "process", None))


def is_stage_object(target: Any) -> bool:
    """An instance of a stage class (has a ``process`` method), as opposed to a function."""
    return not isinstance(target, type) and callable(getattr(target, "process", None))
