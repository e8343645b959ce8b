"""The Run handle: what ``Pipeline.run()`` returns.

Stopping rules the handle enforces:

* ``wait()`` and iteration that are interrupted (Ctrl-C, SIGTERM, an exception in
  the consumer's loop, ``break``) cancel the run and wait for its workers (at most
  the run's ``grace`` plus the time to kill worker processes) before they re-raise.
  A second Ctrl-C or SIGTERM during that wait stops the workers at once.
* While a run is active, SIGTERM raises ``SystemExit(143)`` in the main thread, so
  that it unwinds through ``wait()`` like Ctrl-C does; with no active run it keeps
  its default action. The handler is installed only where SIGTERM had its default.
* At interpreter exit, active runs are cancelled and their workers stopped.
"""

from __future__ import annotations

import atexit
import itertools
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from ._errors import Closed
from ._workers._base import Stopping

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator
    from types import FrameType, TracebackType

    from ._engine._local import LocalRun
    from ._observe._stats import Failure, RunStats, WorkerStatus

__all__ = ["Run"]

T = TypeVar("T")

_active: set[LocalRun] = set()
_active_lock = threading.Lock()
_hooks_installed = False


def _register(run: LocalRun) -> None:
    global _hooks_installed
    with _active_lock:
        _active.add(run)
        if not _hooks_installed:
            _hooks_installed = True
            atexit.register(_stop_all_at_exit)
            if threading.current_thread() is threading.main_thread():
                try:
                    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                        signal.signal(signal.SIGTERM, _on_sigterm)
                except (ValueError, OSError):
                    pass


def _unregister(run: LocalRun) -> None:
    with _active_lock:
        _active.discard(run)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    with _active_lock:
        busy = bool(_active)
    if busy:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _stop_all_at_exit() -> None:
    with _active_lock:
        runs = list(_active)
    for run in runs:
        run.cancel()
    for run in runs:
        run.done.wait(run.grace + 35.0)
    # then the launcher (if there is one), so that no process outlives this one
    zygote = sys.modules.get("conveyor._workers._zygote")
    if zygote is not None:
        zygote.Zygote.shutdown_current()


class _Outputs(itertools.chain[T]):
    """The iterator of a run's outputs. They come in chunks, and chain walks each chunk
    in C: one Python-level step per chunk, not per item. Closing it (or dropping it
    before the end) closes the chunk generator, which cancels the run."""

    source: Generator[list[T], None, None]

    def close(self) -> None:
        self.source.close()


class Run(Generic[T]):
    """A running (or finished) pipeline. Made by ``Pipeline.run()``; not by hand."""

    def __init__(self, engine_run: LocalRun, progress: Any = None) -> None:
        self._run = engine_run
        self._iterating = False
        self._progress = progress
        _register(engine_run)
        threading.Thread(target=self._reap, name="conveyor-run-reaper", daemon=True).start()

    def _reap(self) -> None:
        self._run.done.wait()
        self._stop_progress()
        _unregister(self._run)

    def _stop_progress(self) -> None:
        # before wait() or the loop hands control back: the last frame of the live
        # view must not land after the caller's own output (stop() is idempotent)
        if self._progress is not None:
            self._progress.stop()

    # -- waiting ----------------------------------------------------------------

    def wait(self, timeout: float | None = None) -> None:
        """Block until the run is over; raise its error (StageError, Cancelled, ...).

        If the last stage is not a sink and nobody iterates over the run, its
        outputs are taken and dropped, so that the run can end. ``timeout``
        raises ``TimeoutError`` (the run goes on).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            out = self._run.output
            if out is not None and not self._iterating:
                self._drain(out, deadline)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._run.done.wait(left):
                raise TimeoutError(f"run {self.name!r} is still running after {timeout}s")
        except (KeyboardInterrupt, SystemExit):
            self._stop_and_join()
            raise
        self._stop_progress()
        self._raise_error()

    def _drain(self, out: Any, deadline: float | None) -> None:
        import queue

        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                out.get_many(1 << 16, timeout=left)
            except (Closed, Stopping):
                return
            except queue.Empty:
                raise TimeoutError(f"run {self.name!r} is still running") from None

    def _raise_error(self) -> None:
        err = self._run.control.error
        if err is not None:
            raise err

    def _stop_and_join(self) -> None:
        """Cancel and wait for the workers; a second Ctrl-C (or SIGTERM) while waiting
        stops them at once: worker processes are killed, threads abandoned."""
        self._run.cancel()
        try:
            self._run.done.wait(self._run.grace + 35.0)
        except (KeyboardInterrupt, SystemExit):
            self._run.hurry()
            self._run.done.wait(35.0)
            raise
        finally:
            self._stop_progress()

    def __iter__(self) -> Iterator[T]:
        """Stream the outputs of the last stage, in order unless it said otherwise.

        When the loop ends, the run is over and its workers are gone. Leaving the
        loop early (``break``, an exception) cancels the run.
        """
        chunks = self._chunks()
        outputs = cast("_Outputs[T]", _Outputs.from_iterable(chunks))
        outputs.source = chunks
        return outputs

    def _chunks(self) -> Generator[list[T], None, None]:
        out = self._run.output
        if out is None:
            self.wait()
            return
        self._iterating = True
        try:
            while True:
                try:
                    chunk = out.get_many(1 << 16)
                except (Closed, Stopping):
                    break
                yield chunk
        except BaseException:
            self._stop_and_join()
            raise
        self.wait()

    def cancel(self) -> None:
        """Stop reading the sources and stop every worker after its current item.

        ``wait()`` then raises ``Cancelled``, unless the run had already finished.
        Returns at once; ``wait()`` waits for the workers.
        """
        self._run.cancel()

    # -- looking ----------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._run.name

    @property
    def state(self) -> str:
        """running, finished, failed, or cancelled."""
        return self._run.state

    def done(self) -> bool:
        """Whether the run is over (every worker ended or given up on)."""
        return self._run.done.is_set()

    @property
    def failures(self) -> list[Failure]:
        """Every item that failed for good so far: stage, item, error, traceback, attempts."""
        return list(self._run.control.failures)

    @property
    def error(self) -> BaseException | None:
        """The error that stopped the run, if any."""
        return self._run.control.error

    def stats(self) -> RunStats:
        """Per-stage counters: items in, out, failed, busy seconds, queue fill."""
        return self._run.stats()

    def workers(self) -> list[WorkerStatus]:
        """Every worker: name, stage, kind, pid, thread id, alive, state, items done."""
        return self._run.workers()

    def __enter__(self) -> Run[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None or not self.done():
            if exc_type is None:
                self.wait()
            else:
                self._stop_and_join()

    def __repr__(self) -> str:
        return f"<Run {self.name!r} {self.state}>"
