"""The Pipeline builder: an immutable plan of stages, validated as it is built.

Every builder method returns a new Pipeline and leaves the old one as it was, so
a partial pipeline can be reused and extended in different ways. Everything that
can be checked before a worker starts is checked here: counts and sizes, that a
stage is callable (or a stage class), that a process stage can be pickled.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, overload

from ._errors import KindWarning
from ._stage import (
    SourceSpec,
    StageSpec,
    check_batch_size,
    check_kind,
    check_maxsize,
    check_policy,
    check_positive_int,
    check_producer,
    check_sendable,
    check_stage_target,
    default_stage_name,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from typing import TypeAlias

    from ._observe._stats import Failure
    from ._run import Run

    OnError: TypeAlias = "str | Callable[[Failure], object]"
    """on_error: "raise", "skip", or a function called with each Failure."""

__all__ = ["Pipeline", "SupportsProcess"]

T = TypeVar("T")
U = TypeVar("U")
T_contra = TypeVar("T_contra", contravariant=True)
U_co = TypeVar("U_co", covariant=True)


class SupportsProcess(Protocol[T_contra, U_co]):
    """A stage class: ``process(item)`` per item; optional ``setup()`` and ``teardown()``
    run once per worker (``teardown`` also after ``process`` raised)."""

    def process(self, item: T_contra, /) -> U_co: ...


class Pipeline(Generic[T]):
    """A plan of stages: a source, then map / filter / flat_map stages, maybe a sink.

    ``pipeline.run()`` starts it and returns a :class:`Run`; iterating a pipeline
    runs it and streams the outputs of its last stage.
    """

    def __init__(self, name: str | None = None) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str, got {name!r}")
        self._name = name or "pipeline"
        self._source: SourceSpec | None = None
        self._stages: tuple[StageSpec, ...] = ()

    def _extend(self, source: SourceSpec | None, stage: StageSpec | None) -> Pipeline[Any]:
        new: Pipeline[Any] = Pipeline(self._name)
        new._source = source if source is not None else self._source
        new._stages = self._stages + ((stage,) if stage is not None else ())
        return new

    @property
    def name(self) -> str:
        return self._name

    @property
    def stages(self) -> tuple[str, ...]:
        """The stage names, in order (the source first)."""
        first = (self._source.name,) if self._source is not None else ()
        return first + tuple(s.name for s in self._stages)

    def __repr__(self) -> str:
        return f"<Pipeline {self._name!r}: {' -> '.join(self.stages) or 'empty'}>"

    # -- building ---------------------------------------------------------------

    def source(
        self,
        *sources: Any,
        kind: str = "thread",
        name: str | None = None,
        on_error: OnError = "raise",
        retries: int = 0,
        backoff: float = 0.1,
        timeout: float | None = None,
        max_crashes: int = 2,
        batch_size: int | None = None,
    ) -> Pipeline[Any]:
        """Where items come from: one iterable, or one or more producer functions.

        ``source(iterable)`` reads the iterable in a thread of this process.
        ``source(fn1, fn2, ...)`` runs each producer (a generator function, or a
        function returning an iterable) in its own worker of ``kind``; the stream
        ends when every producer has returned.
        """
        if self._source is not None or self._stages:
            raise ValueError("this pipeline already has a source; a pipeline has exactly one")
        if not sources:
            raise TypeError("source() needs an iterable or at least one producer function")
        stage = name if name is not None else "source"
        if len(sources) == 1 and not callable(sources[0]):
            try:
                iter(sources[0])
            except TypeError:
                raise TypeError(
                    f"source() takes an iterable or producer functions; got "
                    f"{type(sources[0]).__name__} {sources[0]!r:.80}"
                ) from None
            if kind != "thread":
                raise ValueError(
                    "an iterable source is read by a thread of this process; kind applies to "
                    "producer functions: source(fn1, fn2, ..., kind='process')"
                )
            return self._extend(SourceSpec(sources[0], stage), None)
        for fn in sources:
            check_producer(fn, stage)
        check_kind(kind, stage)
        producers = tuple(sources)
        spec = StageSpec(
            name=stage,
            op="produce",
            target=None,
            workers=len(producers),
            kind=kind,
            maxsize=None,
            ordered=False,
            producers=producers,
            payload=check_sendable(None, stage) if kind == "process" else None,
        )
        if kind == "process":
            _start_launcher()
            check_sendable(producers, stage)
        return self._extend(None, spec)

    def _stage(
        self,
        op: str,
        fn: Any,
        workers: int,
        kind: str,
        maxsize: int | None,
        ordered: bool,
        name: str | None,
        policy_args: tuple[object, object, object, object, object],
        batch_size: int | None = None,
    ) -> Pipeline[Any]:
        if self._source is None and not self._stages:
            raise ValueError(f"add a source before .{op}(): Pipeline().source(items).{op}(...)")
        if self._stages and self._stages[-1].is_sink:
            raise ValueError(
                f"the pipeline already ends with sink {self._stages[-1].name!r}; "
                f"a sink is the last stage, so .{op}() cannot follow it"
            )
        stage = self._stage_name(op, fn, name)
        kind = check_kind(kind, stage)
        check_stage_target(op, fn, stage, kind)
        workers = check_positive_int("workers", workers, stage)
        maxsize = check_maxsize(maxsize, stage)
        if not isinstance(ordered, bool):
            raise TypeError(f"ordered must be True or False, got {ordered!r} (stage {stage!r})")
        policy = check_policy(stage, *policy_args)
        batch_size = check_batch_size(batch_size, maxsize, stage)
        payload, unsendable = None, None
        if kind == "process":
            _start_launcher()
            payload = check_sendable(fn, stage)
        elif kind == "auto":
            payload, unsendable = _payload_for_auto(fn, stage)
        spec = StageSpec(
            stage,
            op,
            fn,
            workers,
            kind,
            maxsize,
            ordered,
            policy=policy,
            batch_size=batch_size,
            payload=payload,
            unsendable=unsendable,
        )
        return self._extend(None, spec)

    def _stage_name(self, op: str, fn: Any, name: str | None) -> str:
        taken = set(self.stages)
        if name is not None:
            if not isinstance(name, str) or not name:
                raise TypeError(f"name must be a non-empty str, got {name!r}")
            if name in taken:
                raise ValueError(f"stage name {name!r} is already used in this pipeline")
            return name
        base = default_stage_name(op, fn)
        stage, n = base, 1
        while stage in taken:
            n += 1
            stage = f"{base}_{n}"
        return stage

    @overload
    def map(
        self,
        fn: type[SupportsProcess[T, U]],
        *,
        workers: int = ...,
        kind: str = ...,
        maxsize: int | None = ...,
        ordered: bool = ...,
        name: str | None = ...,
        on_error: OnError = ...,
        retries: int = ...,
        backoff: float = ...,
        timeout: float | None = ...,
        max_crashes: int = ...,
        batch_size: int | None = ...,
    ) -> Pipeline[U]: ...

    @overload
    def map(
        self,
        fn: SupportsProcess[T, U],
        *,
        workers: int = ...,
        kind: str = ...,
        maxsize: int | None = ...,
        ordered: bool = ...,
        name: str | None = ...,
        on_error: OnError = ...,
        retries: int = ...,
        backoff: float = ...,
        timeout: float | None = ...,
        max_crashes: int = ...,
        batch_size: int | None = ...,
    ) -> Pipeline[U]: ...

    @overload
    def map(
        self,
        fn: Callable[[T], U],
        *,
        workers: int = ...,
        kind: str = ...,
        maxsize: int | None = ...,
        ordered: bool = ...,
        name: str | None = ...,
        on_error: OnError = ...,
        retries: int = ...,
        backoff: float = ...,
        timeout: float | None = ...,
        max_crashes: int = ...,
        batch_size: int | None = ...,
    ) -> Pipeline[U]: ...

    def map(
        self,
        fn: Any,
        *,
        workers: int = 1,
        kind: str = "auto",
        maxsize: int | None = None,
        ordered: bool = True,
        name: str | None = None,
        on_error: OnError = "raise",
        retries: int = 0,
        backoff: float = 0.1,
        timeout: float | None = None,
        max_crashes: int = 2,
        batch_size: int | None = None,
    ) -> Pipeline[Any]:
        """Apply ``fn`` to every item, on ``workers`` workers of ``kind``.

        ``fn`` is a function or a stage class (``setup`` / ``process`` / ``teardown``,
        one instance per worker). ``maxsize`` bounds the items waiting in this
        stage's input (None: conveyor sizes it). ``ordered=False`` passes results
        on as they finish instead of in input order.

        When an item fails (every stage takes these options):

        * ``retries=N`` runs it again up to N times after it raised, waiting
          ``backoff`` seconds, then twice as long each time;
        * ``on_error="raise"`` then stops the run (``wait()`` raises StageError),
          ``"skip"`` records it in ``run.failures`` and goes on, and a function is
          called with each :class:`Failure` and then goes on (if it raises, the run
          stops); it is called in the main process, from the engine's threads, maybe
          several at once;
        * ``timeout=`` seconds bounds each item: past it, a worker process is killed
          and replaced, a thread worker is abandoned and replaced, and the item
          counts as a failed attempt (ItemTimeout);
        * an item whose delivery killed the worker process is delivered again, alone,
          to a new worker; once it has killed ``max_crashes`` workers it fails with
          WorkerCrashed.

        ``batch_size=`` fixes how many items a worker takes at once; by default
        conveyor sizes batches from the time and size of the items it measures.
        """
        return self._stage(
            "map",
            fn,
            workers,
            kind,
            maxsize,
            ordered,
            name,
            (on_error, retries, backoff, timeout, max_crashes),
            batch_size,
        )

    def filter(
        self,
        pred: Callable[[T], object] | type[SupportsProcess[T, object]] | SupportsProcess[T, object],
        *,
        workers: int = 1,
        kind: str = "auto",
        maxsize: int | None = None,
        ordered: bool = True,
        name: str | None = None,
        on_error: OnError = "raise",
        retries: int = 0,
        backoff: float = 0.1,
        timeout: float | None = None,
        max_crashes: int = 2,
        batch_size: int | None = None,
    ) -> Pipeline[T]:
        """Keep the items for which ``pred(item)`` is true."""
        return self._stage(
            "filter",
            pred,
            workers,
            kind,
            maxsize,
            ordered,
            name,
            (on_error, retries, backoff, timeout, max_crashes),
            batch_size,
        )

    @overload
    def flat_map(
        self,
        fn: type[SupportsProcess[T, Iterable[U]]],
        *,
        workers: int = ...,
        kind: str = ...,
        maxsize: int | None = ...,
        ordered: bool = ...,
        name: str | None = ...,
        on_error: OnError = ...,
        retries: int = ...,
        backoff: float = ...,
        timeout: float | None = ...,
        max_crashes: int = ...,
        batch_size: int | None = ...,
    ) -> Pipeline[U]: ...

    @overload
    def flat_map(
        self,
        fn: SupportsProcess[T, Iterable[U]],
        *,
        workers: int = ...,
        kind: str = ...,
        maxsize: int | None = ...,
        ordered: bool = ...,
        name: str | None = ...,
        on_error: OnError = ...,
        retries: int = ...,
        backoff: float = ...,
        timeout: float | None = ...,
        max_crashes: int = ...,
        batch_size: int | None = ...,
    ) -> Pipeline[U]: ...

    @overload
    def flat_map(
        self,
        fn: Callable[[T], Iterable[U]],
        *,
        workers: int = ...,
        kind: str = ...,
        maxsize: int | None = ...,
        ordered: bool = ...,
        name: str | None = ...,
        on_error: OnError = ...,
        retries: int = ...,
        backoff: float = ...,
        timeout: float | None = ...,
        max_crashes: int = ...,
        batch_size: int | None = ...,
    ) -> Pipeline[U]: ...

    def flat_map(
        self,
        fn: Any,
        *,
        workers: int = 1,
        kind: str = "auto",
        maxsize: int | None = None,
        ordered: bool = True,
        name: str | None = None,
        on_error: OnError = "raise",
        retries: int = 0,
        backoff: float = 0.1,
        timeout: float | None = None,
        max_crashes: int = 2,
        batch_size: int | None = None,
    ) -> Pipeline[Any]:
        """Pass on every element of the iterable ``fn(item)`` returns (streamed: a
        generator's elements go on while it runs)."""
        return self._stage(
            "flat_map",
            fn,
            workers,
            kind,
            maxsize,
            ordered,
            name,
            (on_error, retries, backoff, timeout, max_crashes),
            batch_size,
        )

    def sink(
        self,
        fn: Callable[[T], object] | type[SupportsProcess[T, object]] | SupportsProcess[T, object],
        *,
        workers: int = 1,
        kind: str = "auto",
        maxsize: int | None = None,
        name: str | None = None,
        on_error: OnError = "raise",
        retries: int = 0,
        backoff: float = 0.1,
        timeout: float | None = None,
        max_crashes: int = 2,
        batch_size: int | None = None,
    ) -> Pipeline[None]:
        """The terminal consumer: call ``fn`` on every item; its return values are dropped."""
        return self._stage(
            "sink",
            fn,
            workers,
            kind,
            maxsize,
            False,
            name,
            (on_error, retries, backoff, timeout, max_crashes),
            batch_size,
        )

    # -- running ----------------------------------------------------------------

    def run(
        self,
        *,
        progress: bool = False,
        grace: float = 2.0,
        stall_timeout: float | None = None,
        on_stall: str = "raise",
    ) -> Run[T]:
        """Start the pipeline and return its :class:`Run`.

        ``progress=True`` shows live per-stage progress on stderr. ``grace`` is how
        long a stopping run (error, cancel, Ctrl-C) waits for workers to finish
        their current item before worker processes are killed and threads still in
        user code are abandoned.

        ``stall_timeout=`` seconds turns the stall watchdog on (off by default): when
        nothing moves for that long while items are pending (no stage takes or
        finishes an item, the source yields nothing, nobody takes an output), a
        report of every worker (state, item, what it waits for, stack) goes to
        stderr and the run stops with :class:`Stalled` (``on_stall="raise"``), or a
        :class:`StallWarning` carries the report and the run goes on
        (``on_stall="warn"``). A single item longer than ``stall_timeout`` on the
        only busy worker counts as a stall: give long items a larger one.
        """
        from ._engine._local import LocalRun
        from ._run import Run

        if not self._stages and self._source is None:
            raise ValueError("an empty pipeline: add a source, then stages")
        if not isinstance(grace, (int, float)) or grace < 0:
            raise ValueError(f"grace must be a number of seconds >= 0, got {grace!r}")
        stall = None
        if stall_timeout is not None or on_stall != "raise":  # the watchdog's module
            from ._engine._stall import check_stall_options  # only when it is asked for

            stall = check_stall_options(stall_timeout, on_stall)
        stages = self._stages
        if not stages:  # a bare source: pass its items through
            stages = (StageSpec("items", "map", _identity, 1, "thread", None, True),)
        engine_run = LocalRun(
            self._name,
            self._source,
            stages,
            grace=float(grace),
            stall_timeout=stall,
            on_stall=str(on_stall),
        )
        reporter = None
        if progress:
            from ._observe._progress import start_progress

            reporter = start_progress(engine_run)
        try:
            engine_run.start()
        except BaseException:
            if reporter is not None:
                reporter.stop()
            raise
        return Run(engine_run, reporter)

    def __iter__(self) -> Iterator[T]:
        return iter(self.run())


def _identity(item: Any) -> Any:
    return item


def _payload_for_auto(fn: Any, stage: str) -> tuple[bytes | None, str | None]:
    """A kind="auto" stage's target pickled for processes, or why it cannot be (then it
    will run on threads, and a KindWarning says so)."""
    from ._gil import shared_state_reason
    from ._stage import is_async_function, stage_function
    from ._workers._serialize import dumps_function

    if is_async_function(stage_function(fn)) or shared_state_reason(fn) is not None:
        return None, None  # threads or asyncio whatever it measures: no pickle needed
    try:
        return dumps_function(fn), None
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            KindWarning(
                f"stage {stage!r} will run on threads: kind='auto' cannot send it to a "
                f"process ({why}). Pass kind='thread' to say so, or make that state inside "
                "the worker (a stage class that opens it in setup())"
            ),
            stacklevel=4,
        )
        return None, why


def _start_launcher() -> None:
    """A pipeline with process stages will need the worker launcher: start it now,
    so that its start-up overlaps with building the rest of the pipeline."""
    from ._workers._zygote import Zygote

    Zygote.get()
