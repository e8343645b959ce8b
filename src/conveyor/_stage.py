"""Stage specs: what the user asked for, validated before anything starts."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._workers._apply import ItemPolicy, is_stage_class, is_stage_object

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = [
    "KINDS",
    "SourceSpec",
    "StagePolicy",
    "StageSpec",
    "check_policy",
    "check_stage_target",
    "default_stage_name",
]

KINDS = ("auto", "thread", "process", "asyncio")


@dataclass(frozen=True)
class StagePolicy:
    """What a stage does when an item fails, hangs, or kills its worker."""

    on_error: str | Callable[[Any], object] = "raise"
    """"raise" (stop the run), "skip" (record it in run.failures and go on), or a
    function called with each Failure before it is recorded."""
    retries: int = 0
    backoff: float = 0.1
    timeout: float | None = None
    """Seconds an item may take; past it, a process worker is killed and replaced, a
    thread worker is abandoned and replaced."""
    max_crashes: int = 2
    """Deliveries of one item that may kill a worker process before it counts as failed."""

    @property
    def item_policy(self) -> ItemPolicy:
        return ItemPolicy(
            retries=self.retries,
            backoff=self.backoff,
            skip=self.on_error != "raise",
            track=self.timeout is not None,
        )


DEFAULT_POLICY = StagePolicy()


@dataclass(frozen=True)
class StageSpec:
    """One stage of a pipeline: an op applied by ``workers`` workers of one kind."""

    name: str
    op: str  # map, filter, flat_map, sink, produce
    target: Any  # a function, a stage class or instance; for produce, unused
    workers: int
    kind: str
    maxsize: int | None
    ordered: bool
    producers: tuple[Callable[[], Iterable[Any]], ...] = ()
    policy: StagePolicy = DEFAULT_POLICY
    batch_size: int | None = None
    """Items per batch, fixed; None: conveyor sizes batches from what it measures."""
    payload: bytes | None = field(default=None, compare=False, repr=False)
    """For process (and auto) stages: the target, pickled once at build time."""
    unsendable: str | None = None
    """For auto stages: why the target cannot go to a process (it stays on threads)."""

    @property
    def is_async(self) -> bool:
        return self.op != "produce" and is_async_function(stage_function(self.target))

    @property
    def is_sink(self) -> bool:
        return self.op == "sink"


@dataclass(frozen=True)
class SourceSpec:
    """An iterable source, read by a feeder thread of the main process."""

    iterable: Iterable[Any]
    name: str = "source"


def default_stage_name(op: str, target: Any) -> str:
    fn = target
    if is_stage_object(target) and not isinstance(target, type):
        fn = type(target)
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or name == "<lambda>" or not name.isidentifier():
        func = getattr(fn, "func", None)  # functools.partial
        name = getattr(func, "__name__", None)
    if not isinstance(name, str) or name == "<lambda>" or not name.isidentifier():
        return op
    return name


def check_positive_int(what: str, value: object, stage: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int >= 1, got {value!r} (stage {stage!r})")
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value} (stage {stage!r})")
    return value


def check_maxsize(value: object, stage: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"maxsize must be None (sized by conveyor) or an int >= 1, got {value!r} "
            f"(stage {stage!r})"
        )
    if value < 1:
        raise ValueError(
            f"maxsize must be >= 1 (or None to let conveyor size it), got {value} (stage {stage!r})"
        )
    return value


def check_policy(
    stage: str,
    on_error: object,
    retries: object,
    backoff: object,
    timeout: object,
    max_crashes: object,
) -> StagePolicy:
    if not (on_error in ("raise", "skip") or callable(on_error)):
        raise ValueError(
            f"on_error must be 'raise', 'skip' or a function called with each Failure, "
            f"got {on_error!r} (stage {stage!r})"
        )
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r} (stage {stage!r})")
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not backoff >= 0:
        raise ValueError(
            f"backoff must be a number of seconds >= 0, got {backoff!r} (stage {stage!r})"
        )
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0
    ):
        raise ValueError(
            f"timeout must be None or a number of seconds > 0, got {timeout!r} (stage {stage!r})"
        )
    if isinstance(max_crashes, bool) or not isinstance(max_crashes, int) or max_crashes < 1:
        raise ValueError(f"max_crashes must be an int >= 1, got {max_crashes!r} (stage {stage!r})")
    return StagePolicy(
        on_error=on_error,
        retries=retries,
        backoff=float(backoff),
        timeout=None if timeout is None else float(timeout),
        max_crashes=max_crashes,
    )


def check_batch_size(value: object, maxsize: int | None, stage: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"batch_size must be None (sized by conveyor) or an int >= 1, got {value!r} "
            f"(stage {stage!r})"
        )
    if maxsize is not None and value > maxsize:
        raise ValueError(
            f"batch_size ({value}) cannot be larger than maxsize ({maxsize}): a batch is taken "
            f"from the stage's input, which holds at most maxsize items (stage {stage!r})"
        )
    return value


def check_kind(kind: object, stage: str) -> str:
    if kind not in KINDS:
        raise ValueError(
            f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r} (stage {stage!r})"
        )
    return str(kind)


def check_stage_target(op: str, target: Any, stage: str, kind: str = "thread") -> None:
    """A function, a stage class, or an instance of one; never a generator where a
    function is needed; async (``async def``) exactly when the kind runs coroutines."""
    if is_stage_class(target):
        try:
            inspect.signature(target).bind()
        except TypeError:
            raise TypeError(
                f"stage {stage!r}: class {target.__qualname__} must be constructible with no "
                "arguments (conveyor makes one instance per worker); pass settings as class "
                "attributes, or pass an instance instead of the class"
            ) from None
        except ValueError:  # no signature available: trust it
            pass
        fn = target.process
    elif isinstance(target, type) and any(
        callable(getattr(target, m, None)) for m in ("setup", "teardown")
    ):
        raise TypeError(
            f"stage {stage!r}: class {target.__qualname__} has no process(self, item) method; "
            "a stage class needs process(), and may have setup() and teardown()"
        )
    elif is_stage_object(target):
        fn = target.process
    elif callable(target):
        fn = target  # a function, or a class used as one (int, str): one call per item
    else:
        raise TypeError(
            f"stage {stage!r}: expected a function or a stage class, got "
            f"{type(target).__name__} {target!r:.80}, which is not callable"
        )
    if inspect.isgeneratorfunction(fn) and op in ("map", "filter", "sink"):
        hint = (
            "use .flat_map(fn) to pass on each item it yields"
            if op == "map"
            else ("a generator function returns a generator object, not a result")
        )
        raise TypeError(f"stage {stage!r}: {_name(fn)} is a generator function; {hint}")
    if inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"stage {stage!r}: {_name(fn)} is an async generator function; async stages "
            "return one result per item (async def ... return), async generators are not "
            "supported"
        )
    is_async = is_async_function(fn)
    if is_async and kind not in ("asyncio", "auto"):
        raise TypeError(
            f"stage {stage!r}: {_name(fn)} is an async function (async def), which kind="
            f"{kind!r} cannot run: use kind='asyncio' (its workers are concurrent coroutines "
            "on an event loop)"
        )
    if not is_async and kind == "asyncio":
        raise TypeError(
            f"stage {stage!r}: kind={kind!r} runs async functions (async def), and "
            f"{_name(fn)} is a regular function: use kind='thread' or kind='process'"
        )


def stage_function(target: Any) -> Any:
    """The function a stage calls per item: ``target``, or its ``process`` method."""
    if is_stage_class(target) or is_stage_object(target):
        return target.process
    return target


def is_async_function(fn: Any) -> bool:
    """``async def`` (also through functools.partial), or an object whose __call__ is."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 (a callable object's method)
    return call is not None and not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


def check_producer(fn: Any, stage: str) -> None:
    if not callable(fn):
        raise TypeError(
            f"stage {stage!r}: source() takes one iterable, or producer functions; "
            f"{type(fn).__name__} {fn!r:.80} is neither"
        )
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(f"stage {stage!r}: async producers are not supported yet ({_name(fn)})")


def check_sendable(target: Any, stage: str) -> bytes:
    """Pickle a process stage's target once, now, so that a function or state that
    cannot go to a worker process fails here with a message, not in the run."""
    from ._workers._serialize import dumps_function

    try:
        return dumps_function(target)
    except Exception as exc:
        raise TypeError(
            f"stage {stage!r} (kind='process') cannot be sent to a worker process: "
            f"{type(exc).__name__}: {exc}. Use kind='thread', or make that state inside the "
            "worker: pass a stage class and open it in setup()"
        ) from exc


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or repr(fn))
