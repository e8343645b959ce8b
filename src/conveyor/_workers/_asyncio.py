"""Asyncio workers: each worker is a coroutine; a stage's workers share one event loop.

Shape of a stage of ``n`` asyncio workers::

    inbox ──take──▶ taker ──────────┐         loop thread (one per stage)
                    (one take at    │ mailbox   worker 1..n: tasks that run
                     a time)        ├────────▶  `await fn(item)` over the items
                       ▲            │           of the batch each one holds
                       │ next batch │                 │
    outbox ◀─complete─ engine threads ◀───────────────┘ hand-ins: the results of
                       (daemon)                         a pass of the loop, together

* **One loop per stage**, on a daemon thread of this process that starts with the
  stage's first worker and ends when its last worker has ended. A stage's loop
  serves that stage alone: a stage whose code blocks its loop (a ``time.sleep``
  inside ``async def``) slows down itself and no other stage, and a stage's end is
  its loop's end, so when a run is over no loop is left running.
* **The loop never waits on the engine.** Taking a batch and handing in results
  wait on threading conditions (input, the reorder window, room downstream), so they
  run on threads of the stage and the workers await them:

  - A worker hands in a finished batch, then waits for its next one, as a thread
    worker does (it holds one batch at a time). The hand-ins made in one pass of the
    loop go to an engine thread together, which completes them, then takes the next
    batches: a burst of workers finishing at once wakes one thread, not one each.
  - At most one thread of the stage is ever in ``take`` (the runtime hands out
    batches one taker at a time anyway): an engine thread takes if nobody else is
    taking, else the request goes to the stage's taker thread, which waits its turn.
  - Engine threads are started when calls overlap (at least one per call in flight,
    so that a call never waits for a thread: a hand-in never waits behind a take
    stuck on the reorder window, which only that hand-in can open), and are daemons,
    as thread workers are, so that nothing blocked in the engine can hold up the
    interpreter's exit.
  - Results come back through a mailbox: one wake-up of the loop for all the results
    that arrive while it is busy.

* **Items.** A worker runs the items of its batch one after another (concurrency
  comes from the workers), with the thread kind's policy: retries after a backoff
  (``asyncio.sleep``), skipping, and ``timeout``. An item past its timeout is
  cancelled, which asyncio can do and threads cannot; the attempt fails with
  ``ItemTimeout`` and the traceback is where the item's coroutine was waiting. Code
  that blocks the loop cannot be interrupted: a timeout bounds waiting, not running.
* **Stopping.** When the run stops, every worker's task is cancelled at once, wherever
  it waits, and runs the stage's ``teardown()``. ``setup()`` and ``teardown()`` are
  not cancelled by the stop; a worker still in them after the run's grace is killed:
  cancelled, and reported abandoned, as a thread worker would be.
* ``current_worker()`` is a context variable set in each worker's task, so each
  coroutine sees its own worker, and so do the tasks and ``to_thread`` calls it makes.
* Producer functions (``source(fn1, fn2, kind="asyncio")``) are not coroutines (async
  producers are refused up front): they run as the thread kind runs them.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import queue
import sys
import threading
import traceback
from collections import deque
from time import monotonic, perf_counter
from typing import TYPE_CHECKING, Any, NamedTuple

from .._errors import ItemTimeout, StageError, item_repr
from ._apply import (
    STREAM_CHUNK,
    Abort,
    ItemFailed,
    _iterate,
    describe_exception,
    stage_instance,
)
from ._base import StageFeed, Stopping, WorkerHandle, WorkerKind, WorkerSlot
from ._context import WorkerInfo, set_current_worker
from ._thread import ThreadKind

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ._apply import ItemPolicy, StopFlag

__all__ = ["AsyncioKind", "backend_class"]

THREADS_JOIN_S = 1.0
"""How long a stage's loop thread waits for its engine threads to leave, at most."""
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # the package


class _Taker:
    """Takes batches for a stage's workers, one take at a time.

    The runtime hands out batches one taker at a time anyway, and when a take waits
    (for input, or for the reorder window) the next one would wait too; so at most
    one thread of the stage is ever in ``take``, the holder of ``_gate``. An engine
    thread that has just handed in a batch takes the next one itself when the gate is
    free (a hop fewer); otherwise the request goes to the taker's own thread, which
    waits for its turn.
    """

    def __init__(self, feed: StageFeed, mailbox: _Mailbox, name: str) -> None:
        self._feed = feed
        self._mailbox = mailbox
        self._gate = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[WorkerSlot, asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def request(self, slot: WorkerSlot, fut: asyncio.Future[Any]) -> None:
        """Take the next batch for ``slot`` into ``fut``, on the taker's thread."""
        slot.set_state("idle")  # no batch to work on: it waits for input
        self._requests.put((slot, fut))

    def take_here(self, requests: list[tuple[WorkerSlot, asyncio.Future[Any]]]) -> None:
        """The same for each request, on this thread (an engine thread, never the loop)
        if nobody is taking now, else on the taker's thread."""
        if not self._gate.acquire(blocking=False):
            for slot, fut in requests:
                self.request(slot, fut)
            return
        try:
            for slot, _ in requests:
                slot.set_state("idle")
            for slot, fut in requests:
                self._take(slot, fut)
        finally:
            self._gate.release()

    def _take(self, slot: WorkerSlot, fut: asyncio.Future[Any]) -> None:
        if fut.cancelled():  # its worker has gone: take nothing for it
            return
        got: Any = None
        error: BaseException | None = None
        try:
            got = self._feed.take(slot)
        except BaseException as exc:
            error = exc
        self._mailbox.post(fut, got, error)

    def _serve(self) -> None:
        requests, gate = self._requests, self._gate
        while True:
            request = requests.get()
            if request is None:
                return
            with gate:
                self._take(*request)
            del request

    def close(self) -> list[threading.Thread]:
        self._requests.put(None)
        return [self._thread]


class _EngineThreads:
    """Runs a stage's other blocking engine calls (handing in a batch, streaming part
    of one) off its loop, on daemon threads.

    Invariant: threads >= calls in flight (queued or running), so that a call never
    waits for another one to free a thread. Threads are made when that would break,
    and live until the stage's loop ends; calls seldom overlap, so they are few.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        mailbox: _Mailbox,
        name: str,
        fail: Callable[[BaseException], None],
    ) -> None:
        self._loop = loop
        self._mailbox = mailbox
        self._name = name
        self._fail = fail
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        self._lock = threading.Lock()
        self._threads = 0
        self._started: list[threading.Thread] = []
        self._in_flight = 0

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on an engine thread; it hands its results over itself."""
        with self._lock:
            self._in_flight += 1
            grow = self._in_flight > self._threads
            if grow:
                self._threads += 1
                n = self._threads
        if grow:
            thread = threading.Thread(target=self._serve, name=f"{self._name}-{n}", daemon=True)
            self._started.append(thread)
            thread.start()
        self._jobs.put((fn, args))

    def call(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """``fn(*args)`` on an engine thread; call it on the loop and await the result."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        self.submit(self._settled, fut, fn, args)
        return fut

    def _settled(
        self, fut: asyncio.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn(*args)
        except BaseException as exc:
            error = exc
        self._mailbox.post(fut, result, error)

    def _serve(self) -> None:
        jobs, lock = self._jobs, self._lock
        while True:
            job = jobs.get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except BaseException as exc:  # a bug of ours: never let it pass silently
                self._fail(exc)
            with lock:
                self._in_flight -= 1
            del job, args

    def close(self) -> list[threading.Thread]:
        """Let the threads go (a thread still in a call leaves when the call returns)."""
        with self._lock:
            threads = list(self._started)
        for _ in threads:
            self._jobs.put(None)
        return threads


class _Mailbox:
    """Results of engine calls on their way to the loop: one wake-up of the loop for all
    the results that arrive while it is busy, not one per result."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._results: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._due = False  # a drain is scheduled and has not started yet

    def post(self, fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
        """From any thread."""
        self._results.append((fut, result, error))
        # The drain clears _due before it empties the deque: a result appended after the
        # drain's last look finds _due false, and schedules the next drain.
        if not self._due:
            self._due = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nobody waits for this any more
                pass

    def _drain(self) -> None:
        self._due = False
        results = self._results
        while results:
            _settle(*results.popleft())


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.cancelled():  # its worker was cancelled while the call ran
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class _Expired(Exception):
    """An attempt ran past the stage's timeout and was cancelled."""

    def __init__(self, error: ItemTimeout, stack: str) -> None:
        super().__init__(error)
        self.error = error
        self.stack = stack


class _Careful(NamedTuple):
    results: list[Any]
    done: int
    """Items processed, failed ones included."""
    failures: list[ItemFailed]


class _AsyncStage:
    """One worker's instance of a stage, for coroutines: the counterpart of ``Processor``
    (same ops, same item policy), whose calls are awaited."""

    def __init__(
        self,
        op: str,
        target: Any,
        stop: StopFlag,
        policy: ItemPolicy,
        timeout: float | None,
        where: tuple[str, str],
    ) -> None:
        self.op = op
        self.target = target
        self.stop = stop
        self.policy = policy
        self.timeout = timeout
        self.where = where  # (stage, worker), for ItemTimeout
        self.fn: Callable[[Any], Any] = target
        self.reruns = 0
        self._obj: Any = None

    async def setup(self) -> None:
        self._obj = stage_instance(self.target)
        if self._obj is not None:
            self.fn = self._obj.process
            await _call_hook(getattr(self._obj, "setup", None))

    async def teardown(self) -> None:
        if self._obj is not None:
            await _call_hook(getattr(self._obj, "teardown", None))

    def _stopping(self, error: BaseException) -> bool:
        """Whether ``error`` is the run stopping, not the item failing."""
        return isinstance(error, Abort) or (
            isinstance(error, asyncio.CancelledError) and bool(self.stop[0])
        )

    # -- the fast loops: no retries, no skipping, no timeout ----------------------

    async def apply(
        self, items: Sequence[Any], emit: Callable[[list[Any]], Any]
    ) -> tuple[list[Any], int]:
        """Run the stage over ``items``; return (results not yet emitted, items
        processed). Stops early, between items, once the run stops. Raises ItemFailed."""
        fn, stop, op = self.fn, self.stop, self.op
        out: list[Any] = []
        done = 0
        try:
            if op == "map":
                append = out.append
                for item in items:
                    if stop[0]:
                        break
                    append(await fn(item))
                    done += 1
            elif op == "filter":
                append = out.append
                for item in items:
                    if stop[0]:
                        break
                    if await fn(item):
                        append(item)
                    done += 1
            elif op == "sink":
                for item in items:
                    if stop[0]:
                        break
                    await fn(item)
                    done += 1
            else:  # flat_map: streamed in chunks, as the thread kind does
                limit = STREAM_CHUNK
                for item in items:
                    if stop[0]:
                        break
                    got = await fn(item)
                    elements = got if type(got) is list or type(got) is tuple else _iterate(got, fn)
                    for x in elements:
                        out.append(x)
                        if len(out) >= limit:
                            chunk, out = out, []
                            await emit(chunk)
                    done += 1
        except BaseException as exc:
            if self._stopping(exc):
                raise
            raise ItemFailed(done, exc, out) from None
        return out, done

    # -- the careful loop: retries, skipping, timeout --------------------------------

    async def apply_careful(self, items: Sequence[Any]) -> _Careful:
        """Item by item, with the stage's retries; a failed item is recorded and the
        batch goes on (``skip``), or ItemFailed is raised. Outputs are kept until their
        item succeeds, so that a retried item never passes on a failed attempt's."""
        stop = self.stop
        out: list[Any] = []
        failures: list[ItemFailed] = []
        self.reruns = 0
        done = 0
        for index, item in enumerate(items):
            if stop[0]:
                break
            try:
                got = await self._attempt(item)
            except BaseException as exc:
                if self._stopping(exc):
                    raise
                got = await self._again(index, item, exc, out, failures)
            out.extend(got)
            done += 1
        return _Careful(out, done, failures)

    async def _again(
        self,
        index: int,
        item: Any,
        error: BaseException,
        out: list[Any],
        failures: list[ItemFailed],
    ) -> list[Any]:
        """An attempt failed: retry the item after a pause that doubles, then give up."""
        policy = self.policy
        attempt = 1
        while attempt <= policy.retries and not self.stop[0]:
            self.reruns += 1
            await asyncio.sleep(policy.backoff * 2 ** (attempt - 1))  # a stop cancels it
            attempt += 1
            try:
                return await self._attempt(item)
            except BaseException as exc:
                if self._stopping(exc):
                    raise
                error = exc
        failed = ItemFailed(index, error, out, attempt)
        if isinstance(error, _Expired):
            failed.error, failed.traceback = error.error, error.stack
        if not policy.skip:
            raise failed from None
        failures.append(failed)
        return []

    async def _attempt(self, item: Any) -> list[Any]:
        """One attempt at one item: its outputs. Past the timeout, the attempt is
        cancelled and raises _Expired."""
        timeout = self.timeout
        if timeout is None:
            return await self._outputs(item)
        task = asyncio.current_task()
        assert task is not None
        expired: list[str] = []

        def expire() -> None:
            expired.append(_awaiting(task))
            task.cancel()

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            got = await self._outputs(item)
        except BaseException:
            if not expired or self.stop[0]:
                raise
        finally:
            timer.cancel()
        if expired:  # cancelled: what it did then (return, raise, swallow) does not count
            _uncancel(task)
            stage, worker = self.where
            error = ItemTimeout(stage, worker, item_repr(item), timeout)
            raise _Expired(error, expired[0])
        return got

    async def _outputs(self, item: Any) -> list[Any]:
        op, fn = self.op, self.fn
        if op == "map":
            return [await fn(item)]
        if op == "filter":
            return [item] if await fn(item) else []
        if op == "sink":
            await fn(item)
            return []
        return list(_iterate(await fn(item), fn))


async def _call_hook(hook: Callable[[], Any] | None) -> None:
    """setup() or teardown(): sync or async."""
    if hook is not None:
        got = hook()
        if inspect.isawaitable(got):
            await got


def _awaiting(task: asyncio.Task[Any]) -> str:
    """Where ``task`` waits, as a traceback: its chain of awaits, from the first frame
    of user code (conveyor's own frames above it are left out)."""
    frames = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        frames.append((frame, frame.f_lineno))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    while len(frames) > 1 and frames[0][0].f_code.co_filename.startswith(_HERE):
        del frames[0]
    summary = traceback.StackSummary.extract(iter(frames))
    return "Stack of the item when it timed out (most recent call last):\n" + "".join(
        summary.format()
    )


def _uncancel(task: asyncio.Task[Any]) -> None:
    """A cancellation of ours was handled: take it back, so that asyncio.timeout() and
    TaskGroup in the stage's code count cancellations right (Python 3.11+)."""
    if sys.version_info >= (3, 11):
        task.uncancel()


class AsyncioWorker(WorkerHandle):
    """One worker: a task on its stage's loop."""

    def __init__(self, stage: _StageLoop, feed: StageFeed, slot: WorkerSlot) -> None:
        self.stage = stage
        self.feed = feed
        self.slot = slot
        self.task: asyncio.Task[None] | None = None
        self.cancellable = False  # a stop cancels the worker (not in setup or teardown)
        self.ended = threading.Event()
        self.batch: list[Any] | None = None  # the batch it is on (for stall reports)

    # -- the engine's side --------------------------------------------------------

    def start(self) -> None:
        self.slot.alive = True
        self.stage.start_worker(self)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the worker's task to end, and for the loop thread too once every
        worker of the stage has ended."""
        if not self.ended.wait(timeout):
            return False
        if self.stage.all_ended():
            self.stage.thread.join(timeout)
            return not self.stage.thread.is_alive()
        return True

    def thread_alive(self) -> bool:
        if not self.ended.is_set():
            return True
        return self.stage.all_ended() and self.stage.thread.is_alive()

    def kill(self) -> None:
        """Past the run's grace: cancel the worker wherever it is (setup and teardown
        too); still running then, it is reported abandoned, as a thread worker is."""
        if not self.ended.is_set():
            self.slot.abandoned = True
            self.stage.soon(self._cancel)

    def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def thread_ident(self) -> int | None:
        return self.stage.thread.ident

    def holding(self) -> tuple[list[Any], int] | None:
        batch = self.batch
        if batch is None or self.slot.state != "busy":
            return None
        return batch, -1

    def stack(self, deadline: float) -> str:
        """Where the worker's task waits (its chain of awaits); while its coroutine runs,
        the loop thread's stack (code that blocks the loop)."""
        from ._stacks import coroutine_frames, format_frames, thread_frames, trim

        task = self.task
        coro: Any = task.get_coro() if task is not None else None
        if coro is not None and not getattr(coro, "cr_running", False):
            return format_frames(trim(coroutine_frames(coro)))
        return format_frames(trim(thread_frames(self.stage.thread.ident)))

    # -- the task -----------------------------------------------------------------

    async def run(self) -> None:
        feed, slot = self.feed, self.slot
        slot.pid = os.getpid()
        slot.thread_id = threading.get_native_id()
        set_current_worker(WorkerInfo(slot.name, feed.name, slot.index, "asyncio"), in_context=True)
        if feed.stop[0]:
            return
        spec = feed.spec
        stage = _AsyncStage(
            spec.op,
            spec.target,
            feed.stop,
            spec.policy.item_policy,
            spec.policy.timeout,
            (feed.name, slot.name),
        )
        try:
            await stage.setup()
        except BaseException as exc:
            if not self._stopping(exc):
                feed.fail(StageError(feed.name, slot.name, None, exc, describe_exception(exc)))
            return
        self.cancellable = True
        try:
            await self._work(stage)
        except BaseException as exc:
            if not self._stopping(exc):
                feed.fail(self._unexpected(exc))
        self.cancellable = False
        slot.set_state("stopping")
        try:
            await stage.teardown()
        except BaseException as exc:
            if not self._stopping(exc):
                feed.fail(StageError(feed.name, slot.name, None, exc, describe_exception(exc)))

    def _stopping(self, error: BaseException) -> bool:
        """Whether ``error`` is the run stopping (then it is taken back: the worker goes
        on to its teardown)."""
        if isinstance(error, Stopping):
            return True
        if isinstance(error, asyncio.CancelledError) and self.feed.stop[0]:
            task = self.task
            if task is not None:
                _uncancel(task)
            return True
        return False

    def _unexpected(self, error: BaseException) -> BaseException:
        if isinstance(error, asyncio.CancelledError):  # not by us: by the stage's code
            return StageError(
                self.feed.name, self.slot.name, None, error, describe_exception(error)
            )
        return error  # a bug of ours: never let it pass silently

    async def _work(self, stage: _AsyncStage) -> None:
        """Take batches and apply the stage until the input is exhausted or the run stops."""
        slot, stop, here = self.slot, self.feed.stop, self.stage
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[int, list[Any]] | None] = loop.create_future()
        here.taker().request(slot, fut)
        got = await fut
        while got is not None and not stop[0]:
            seq, items = got
            slot.set_state("busy")
            self.batch = items
            results = await self._apply(stage, seq, items)
            if results is None or stop[0]:
                return
            fut = loop.create_future()
            here.hand_in(slot, seq, results, fut)
            got = await fut

    async def _apply(self, stage: _AsyncStage, seq: int, items: list[Any]) -> list[Any] | None:
        """Run the stage over a batch; None when the batch failed (the run stops)."""
        feed, slot = self.feed, self.slot
        t0 = perf_counter()
        if stage.policy.careful:
            try:
                out = await stage.apply_careful(items)
            except ItemFailed as f:
                slot.retried += stage.reruns
                self._failed(items, f)
                return None
            slot.retried += stage.reruns
            for failure in out.failures:
                self._failed(items, failure)
            results, processed = out.results, out.done
            done = processed - len(out.failures)
        else:
            engine = self.stage.engine()

            def emit(chunk: list[Any]) -> asyncio.Future[Any]:
                return engine.call(feed.partial, seq, chunk, slot)

            try:
                results, processed = await stage.apply(items, emit)
            except ItemFailed as f:
                slot.items_done += f.index
                self._failed(items, f)
                return None
            done = processed
        dt = perf_counter() - t0
        slot.busy_s += dt
        slot.items_done += done
        feed.observe(processed, dt)
        return results

    def _failed(self, items: list[Any], f: ItemFailed) -> None:
        self.feed.item_failed(self.slot, items[f.index], f.error, f.traceback, f.attempts)


class _StageLoop:
    """A stage's event loop, on a thread of its own, and its workers' tasks."""

    def __init__(self, feed: StageFeed) -> None:
        self.feed = feed
        self.workers: list[AsyncioWorker] = []
        self.thread = threading.Thread(
            target=self._run, name=f"conveyor-{feed.name}-loop", daemon=True
        )
        self._lock = threading.Lock()  # guards _loop, _closed, workers and _ended
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._ending = False  # every worker has ended: the loop is on its way out
        self._ready = threading.Event()
        self._all_ended: asyncio.Future[None] | None = None
        self._ended = 0
        self._engine: _EngineThreads | None = None
        self._taker: _Taker | None = None
        self._mailbox: _Mailbox | None = None
        self._hand_ins: list[tuple[WorkerSlot, int, list[Any], asyncio.Future[Any]]] = []

    def add(self, worker: AsyncioWorker) -> bool:
        """A worker joins the stage; False if the loop is ending (it needs a new one)."""
        with self._lock:
            if self._ending:
                return False
            self.workers.append(worker)
            return True

    def start_worker(self, worker: AsyncioWorker) -> None:
        with self._lock:
            if self.thread.ident is None:
                self.thread.start()
        self._ready.wait()
        if not self.soon(self._spawn, worker):
            self._finish(worker, None)  # the loop could not be made

    def soon(self, fn: Callable[..., None], *args: Any) -> bool:
        """Run ``fn(*args)`` on the loop, from any thread; False once the loop is closed."""
        with self._lock:
            if self._loop is None or self._closed:
                return False
            self._loop.call_soon_threadsafe(fn, *args)
            return True

    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def mailbox(self) -> _Mailbox:
        assert self._mailbox is not None
        return self._mailbox

    def engine(self) -> _EngineThreads:
        assert self._engine is not None
        return self._engine

    def taker(self) -> _Taker:
        assert self._taker is not None
        return self._taker

    def hand_in(
        self, slot: WorkerSlot, seq: int, results: list[Any], fut: asyncio.Future[Any]
    ) -> None:
        """On the loop: pass a batch's results on, then take the worker's next batch into
        ``fut`` (a worker takes no more input than a thread worker would). The hand-ins
        made in one pass of the loop go to an engine thread together: a burst of workers
        finishing at once costs one wake-up of one thread, not one each."""
        slot.set_state("blocked")  # waits to pass its results on
        self._hand_ins.append((slot, seq, results, fut))
        if len(self._hand_ins) == 1:
            self.loop().call_soon(self._send_hand_ins)

    def _send_hand_ins(self) -> None:
        batch, self._hand_ins = self._hand_ins, []
        self.engine().submit(self._pass_on, batch)

    def _pass_on(self, batch: list[tuple[WorkerSlot, int, list[Any], asyncio.Future[Any]]]) -> None:
        """On an engine thread: complete each batch, then take the next ones."""
        complete, post = self.feed.complete, self.mailbox().post
        takes = []
        for slot, seq, results, fut in batch:
            try:
                complete(seq, results, slot)
            except BaseException as exc:
                post(fut, None, exc)
            else:
                takes.append((slot, fut))
        del batch
        if takes:
            self.taker().take_here(takes)

    def all_ended(self) -> bool:
        with self._lock:
            workers = list(self.workers)
        return all(w.ended.is_set() for w in workers)

    def cancel_all(self) -> None:
        """The run is stopping: cancel every worker that is not in setup or teardown."""
        with self._lock:
            workers = list(self.workers)
        for w in workers:
            if w.cancellable and w.task is not None:
                w.task.cancel()

    # -- on the loop thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            loop = asyncio.new_event_loop()
        except BaseException as exc:
            self.feed.fail(exc)
            self._ready.set()
            return
        name = f"conveyor-{self.feed.name}"
        self._mailbox = _Mailbox(loop)
        self._engine = _EngineThreads(loop, self._mailbox, f"{name}-engine", self.feed.fail)
        self._taker = _Taker(self.feed, self._mailbox, f"{name}-taker")
        self._all_ended = loop.create_future()
        with self._lock:
            self._loop = loop
        self._ready.set()
        try:
            loop.run_until_complete(self._all_ended)
        except BaseException as exc:  # a bug of ours: never let it pass silently
            self.feed.fail(exc)
        finally:
            try:
                _cancel_leftovers(loop)  # tasks the stage's code started and left behind
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                with self._lock:
                    self._closed = True
                loop.close()  # also lets the default executor's threads go, without waiting
                # when its workers have ended, the engine's calls for them have returned
                deadline = monotonic() + THREADS_JOIN_S
                for thread in self._engine.close() + self._taker.close():
                    thread.join(max(0.0, deadline - monotonic()))
                for w in self.workers:  # none, unless the loop failed before they ran
                    if not w.ended.is_set():
                        self._finish(w, None)

    def _spawn(self, worker: AsyncioWorker) -> None:
        loop = asyncio.get_running_loop()
        worker.task = loop.create_task(worker.run(), name=worker.slot.name)
        worker.task.add_done_callback(lambda task: self._finish(worker, task))

    def _finish(self, worker: AsyncioWorker, task: asyncio.Task[None] | None) -> None:
        """A worker's task ended (or never ran): this is where every worker ends."""
        if worker.ended.is_set():
            return
        feed, slot = worker.feed, worker.slot
        if task is not None and not task.cancelled():
            error = task.exception()
            if error is not None:  # a bug of ours: never let it pass silently
                feed.fail(error)
        slot.set_state("done")
        slot.alive = False
        feed.worker_done()
        worker.ended.set()
        with self._lock:
            self._ended += 1
            self._ending = self._ended >= len(self.workers)
        done = self._all_ended
        if self._ending and done is not None and not done.done():
            done.set_result(None)


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if tasks:
        for t in tasks:
            t.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


class AsyncioKind(WorkerKind):
    kind = "asyncio"

    def __init__(
        self, stop: list[bool], adopt: Callable[[WorkerHandle], None] | None = None
    ) -> None:
        super().__init__(stop, adopt)
        self._loops: dict[str, _StageLoop] = {}
        self._lock = threading.Lock()
        self._producers: ThreadKind | None = None

    def worker(self, feed: StageFeed, slot: WorkerSlot) -> WorkerHandle:
        if feed.spec.op == "produce":  # sync producers: not coroutines
            return self._threads().worker(feed, slot)
        with self._lock:
            stage = self._loops.get(feed.name)
            while True:
                if stage is None:
                    stage = self._loops[feed.name] = _StageLoop(feed)
                handle = AsyncioWorker(stage, feed, slot)
                if stage.add(handle):
                    return handle
                stage = None  # its workers have all ended: a worker added now gets a new loop

    def _threads(self) -> ThreadKind:
        with self._lock:
            if self._producers is None:
                self._producers = ThreadKind(self.stop, self.adopt)
            return self._producers

    def on_stop(self) -> None:
        with self._lock:
            loops = list(self._loops.values())
            producers = self._producers
        for stage in loops:
            stage.soon(stage.cancel_all)
        if producers is not None:
            producers.on_stop()

    def close(self) -> None:
        with self._lock:
            producers = self._producers
        if producers is not None:
            producers.close()


backend_class = AsyncioKind
