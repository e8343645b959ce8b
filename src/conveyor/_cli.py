"""The ``conveyor`` command line: a thin adapter over the library.

Commands::

    conveyor run MODULE:ATTR [--progress/--no-progress] [--print] [--grace SECONDS]
                             [--stall-timeout SECONDS]
    conveyor demo [--files N] [--size-kb K] [--workers W] [--keep] [--dir PATH]
    conveyor gil [--workers N] [--quick] [--json]
    conveyor --version

``run`` imports MODULE (the current directory first on ``sys.path``, as with
``python -m``), takes ATTR (a Pipeline, or a function of no arguments that returns
one), runs it with live progress on stderr, and prints the stats table on stderr
when the run is over, however it ended. Outputs go to stdout only with ``--print``.
``gil`` measures the GIL on this machine (``_gilbench``) and prints a table: rich
on a terminal, plain text otherwise, JSON with ``--json``.

Exit codes are decided in one place, :meth:`_Group.invoke`, the way click's own
exceptions carry theirs (``UsageError.exit_code == 2``)::

    0    the run finished
    1    the run failed: PipelineError (StageError, WorkerCrashed, Stalled, Cancelled)
    2    usage: a bad MODULE:ATTR, a module that cannot be imported, not a Pipeline
    130  Ctrl-C (SIGINT)
    143  SIGTERM (the library turns it into SystemExit(143) while a run is active)

A failed run prints its error message, and for a StageError the worker's
traceback text, never a traceback of conveyor's own frames.

click is imported here and only here; ``import conveyor`` does not load it.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import json
import os
import signal
import sys
import time
import traceback
from typing import IO, TYPE_CHECKING, Any

import click

from . import __version__, _demo, _gilbench
from ._errors import Cancelled, PipelineError, StageError, Stalled
from ._pipeline import Pipeline

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._run import Run

__all__ = ["main"]


# -- errors and their exit codes --------------------------------------------------


class RunFailed(click.ClickException):
    """The pipeline ran and failed: its message, and the worker's traceback text."""

    exit_code = 1

    def __init__(self, error: PipelineError) -> None:
        message = str(error)
        if isinstance(error, Stalled):  # the whole report went to stderr when seen
            message = message.splitlines()[0] + " (the report is above)"
        super().__init__(message)
        self.error = error

    def show(self, file: IO[Any] | None = None) -> None:
        err = file if file is not None else sys.stderr
        if isinstance(self.error, StageError) and self.error.traceback:
            click.echo(self.error.traceback.rstrip("\n"), file=err)
        click.echo(f"Error: {self.format_message()}", file=err)


class Interrupted(click.ClickException):
    """Ctrl-C: the run was cancelled and its workers stopped."""

    exit_code = 128 + signal.SIGINT

    def __init__(self, what: str = "interrupted (SIGINT)") -> None:
        super().__init__(what)

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"Aborted: {self.format_message()}", file=file or sys.stderr)


class Terminated(Interrupted):
    """SIGTERM: as Ctrl-C, with its own exit code."""

    exit_code = 128 + signal.SIGTERM

    def __init__(self) -> None:
        super().__init__("terminated (SIGTERM)")


class BadTarget(click.UsageError):
    """MODULE:ATTR does not name a pipeline; exit code 2 like every usage error.

    ``detail`` is the user's own traceback (an exception raised while importing the
    module or building the pipeline), printed before the message.
    """

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail

    def show(self, file: IO[Any] | None = None) -> None:
        err = file if file is not None else sys.stderr
        if self.detail:
            click.echo(self.detail.rstrip("\n"), file=err)
        super().show(err)


def to_click_exception(exc: BaseException) -> click.ClickException | None:
    """The one map from what a command raised to what the user sees and the exit code."""
    if isinstance(exc, click.ClickException):
        return exc
    if isinstance(exc, PipelineError):
        return RunFailed(exc)
    if isinstance(exc, KeyboardInterrupt):
        return Interrupted()
    if isinstance(exc, SystemExit) and exc.code == Terminated.exit_code:
        return Terminated()
    return None


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (Exception, KeyboardInterrupt, SystemExit) as exc:
            mapped = to_click_exception(exc)
            if mapped is None or mapped is exc:
                raise
            raise mapped from None


# -- loading MODULE:ATTR -----------------------------------------------------------


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _user_traceback(exc: BaseException) -> str:
    """The traceback of ``exc`` without the frames of conveyor and of importlib: what
    is left is the user's code (a SyntaxError keeps its file, line and caret)."""
    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list(
        [
            f
            for f in te.stack
            if not (f.filename.startswith(_PACKAGE_DIR) or "importlib" in f.filename)
        ]
    )
    return "".join(te.format())


def _import_module(name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # like `python -m`: modules of the current directory
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        if name == missing or name.startswith(missing + "."):
            raise BadTarget(
                f"no module named {missing!r} in the current directory ({cwd}) or on "
                f"sys.path: run conveyor from the directory that holds "
                f"{missing.replace('.', '/')}.py, or install its package"
            ) from None
        raise BadTarget(
            f"importing {name!r} failed: it needs the module {missing!r}, which is not "
            "installed here",
            _user_traceback(exc),
        ) from None
    except Exception as exc:
        raise BadTarget(
            f"importing {name!r} raised {type(exc).__name__}: fix the module and run again",
            _user_traceback(exc),
        ) from None


def load_attr(target: str, expected: str) -> Any:
    """The object that ``MODULE:ATTR`` names (ATTR may be dotted, ``jobs.nightly``);
    ``expected`` says what it should be, for the error messages."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise BadTarget(f"expected MODULE:ATTR naming {expected}; got {target!r}")
    module = _import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            found = [k for k, v in vars(module).items() if isinstance(v, Pipeline)]
            hint = f"; its pipelines: {', '.join(sorted(found))}" if found else ""
            raise BadTarget(f"module {module_name!r} has no attribute {attr!r}{hint}") from None
    return obj


def load_pipeline(target: str) -> Pipeline[Any]:
    """The Pipeline that ``MODULE:ATTR`` names."""
    obj = load_attr(
        target,
        "a Pipeline (or a function of no arguments that returns one), such as mypipes:pipeline",
    )
    if isinstance(obj, Pipeline):
        return obj
    what = target
    if not callable(obj):
        raise BadTarget(
            f"{what} is of type {type(obj).__name__}, not a conveyor.Pipeline or a "
            "function of no arguments that returns one"
        )
    try:
        inspect.signature(obj).bind()
    except TypeError:
        raise BadTarget(
            f"{what} needs arguments; conveyor run calls it with none: give it defaults, "
            "or point at a Pipeline or another function"
        ) from None
    except ValueError:
        pass  # no signature to check (a builtin): just call it
    try:
        built = obj()
    except Exception as exc:
        raise BadTarget(
            f"{what}() raised {type(exc).__name__} while building the pipeline",
            _user_traceback(exc),
        ) from None
    if not isinstance(built, Pipeline):
        raise BadTarget(
            f"{what}() returned an object of type {type(built).__name__}, not a conveyor.Pipeline"
        )
    return built


# -- running -------------------------------------------------------------------------


def _is_terminal(stream: IO[Any]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def execute(
    pipeline: Pipeline[Any],
    *,
    progress: bool,
    grace: float,
    echo_outputs: bool = False,
    on_output: Callable[[Any], object] | None = None,
    stall_timeout: float | None = None,
) -> Run[Any]:
    """Run ``pipeline`` to its end; the stats table goes to stderr however it ends.

    Outputs go to stdout with ``echo_outputs``, and to ``on_output(item)`` if given.
    Errors propagate (``_Group.invoke`` turns them into exit codes).

    The command owns its progress reporter rather than ``run(progress=True)``: it
    stops it once the last output is out, before the stats table, and it picks
    plain lines when outputs go to the same terminal (a live table and lines
    printed through it would scramble each other).
    """
    from ._observe._progress import start_progress

    try:
        run = pipeline.run(grace=grace, stall_timeout=stall_timeout)
    except (TypeError, ValueError) as exc:
        raise BadTarget(f"the pipeline cannot start: {exc}") from None
    reporter = None
    try:
        if progress:
            live = False if echo_outputs and _is_terminal(sys.stdout) else None
            reporter = start_progress(run, live=live)
        if echo_outputs or on_output is not None:
            for item in run:
                if on_output is not None:
                    on_output(item)
                if echo_outputs:
                    sys.stdout.write(str(item) + "\n")  # no flush per item: stdout buffers
        else:
            run.wait()
    finally:
        if echo_outputs:
            sys.stdout.flush()
        if reporter is not None:
            reporter.stop()
        click.echo(run.stats().render(), err=True)
        failures = run.failures
        if failures:
            click.echo(f"{len(failures)} item(s) failed:", err=True)
            for f in failures[:SHOW_FAILURES]:
                click.echo(f"  {f!r}", err=True)
            if len(failures) > SHOW_FAILURES:
                click.echo(f"  ... and {len(failures) - SHOW_FAILURES} more", err=True)
    return run


SHOW_FAILURES = 10


# -- commands ------------------------------------------------------------------------


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="conveyor")
def main() -> None:
    """conveyor: producer-consumer pipelines on threads and processes."""


@main.command("run")
@click.argument("target", metavar="MODULE:ATTR")
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Live progress on stderr."
)
@click.option("--print", "echo_outputs", is_flag=True, help="Print each output on stdout.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    metavar="SECONDS",
    help="How long a stopping run lets workers finish their current item.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Stop the run with a report of every worker and its stack when nothing "
    "moves for this long while items are pending (default: off).",
)
def run_command(
    target: str, progress: bool, echo_outputs: bool, grace: float, stall_timeout: float | None
) -> None:
    """Run the pipeline MODULE:ATTR (a Pipeline, or a function returning one).

    MODULE is imported as `python -m` would, from the current directory first.
    """
    pipeline = load_pipeline(target)
    execute(
        pipeline,
        progress=progress,
        grace=grace,
        echo_outputs=echo_outputs,
        stall_timeout=stall_timeout,
    )


@main.command("demo")
@click.option(
    "--files",
    type=click.IntRange(min=1),
    default=_demo.DEFAULT_FILES,
    show_default=True,
    help="Log files to make.",
)
@click.option(
    "--size-kb",
    type=click.IntRange(min=1),
    default=_demo.DEFAULT_SIZE_KB,
    show_default=True,
    help="Size of each log file, in KiB.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=_demo.default_workers,
    show_default="one per CPU",
    help="Process workers of the CPU-bound stage.",
)
@click.option("--keep", is_flag=True, help="Keep the generated logs and reports.")
@click.option(
    "--dir",
    "base_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Make the working directory in PATH (default: the system's temp directory).",
)
@click.option(
    "--progress/--no-progress", default=True, show_default=True, help="Live progress on stderr."
)
def demo_command(
    files: int, size_kb: int, workers: int, keep: bool, base_dir: str | None, progress: bool
) -> None:
    """Make synthetic web-server logs and analyze them: read (threads) ->
    parse and checksum (processes) -> write one report per file (threads)."""
    with _demo.workspace(base_dir, keep) as ws:
        click.echo(f"generating {files} access logs of {size_kb} KiB in {ws.root}", err=True)
        t0 = time.perf_counter()
        data = _demo.generate(ws.logs, files, size_kb)
        click.echo(
            f"generated {data.nbytes / 1e6:.1f} MB, {data.lines:,} requests, in "
            f"{time.perf_counter() - t0:.1f}s; analyzing: read ({_demo.READERS} threads) -> "
            f"analyze ({workers} processes) -> write ({_demo.WRITERS} threads)",
            err=True,
        )
        pipeline = _demo.build_pipeline(data.paths, ws.reports, workers=workers)
        summary = _demo.Summary()
        run = execute(pipeline, progress=progress, grace=2.0, on_output=summary.add)
        where = f"reports kept in {ws.reports}" if keep else f"removed {ws.root}"
        click.echo(summary.render(data, run.stats(), where))


@main.command("gil")
@click.option(
    "--workers",
    type=click.IntRange(min=2, max=_gilbench.MAX_WORKERS),
    default=None,
    metavar="N",
    show_default="one per CPU available, at least 2",
    help="Threads and processes that share the CPU-bound work.",
)
@click.option("--quick", is_flag=True, help="About one second instead of a few; coarser numbers.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
@click.argument("target", metavar="[MODULE:FUNCTION]", required=False)
@click.option(
    "--items",
    metavar="MODULE:ATTR",
    default=None,
    help="With MODULE:FUNCTION: the items to measure it on (an iterable, or a function "
    "of no arguments returning one). Default: 0, 1, 2, ...",
)
def gil_command(
    workers: int | None, quick: bool, as_json: bool, target: str | None, items: str | None
) -> None:
    """Measure the GIL on this machine: a pure-Python loop serially, on N threads and
    on N processes; hashing (which releases the GIL) and sleeping on threads.

    Each row shows its wall and CPU time, its speed-up against its serial run, the
    ideal speed-up, and what the numbers say.

    With MODULE:FUNCTION, classify that function instead, the way kind="auto" would:
    it runs on the items (as a sink, on N workers) until conveyor has chosen its
    kind, and prints the choice and its evidence.
    """
    if target is not None:
        classify_command(target, items, workers)
        return
    if items is not None:
        raise click.UsageError("--items goes with MODULE:FUNCTION")
    status = _StatusLine(sys.stderr)
    try:
        report = _gilbench.run_benchmark(workers, quick=quick, progress=status.show)
    finally:
        status.clear()
    show_report(report, as_json=as_json)


def classify_command(target: str, items_target: str | None, workers: int | None) -> None:
    """``conveyor gil MODULE:FUNCTION``: the kind auto chooses for it, and why."""
    fn = load_attr(target, "a function to classify, such as mymodule:parse")
    if not callable(fn):
        raise BadTarget(f"{target} is of type {type(fn).__name__}, not a function")
    items: Any = itertools.count()
    if items_target is not None:
        items = load_attr(items_target, "an iterable of items, or a function returning one")
        if callable(items):
            items = items()
    n = workers or max(2, _gilbench.available_cpus())
    try:
        run = Pipeline().source(items).sink(fn, workers=n, name="target").run()
    except (TypeError, ValueError) as exc:
        raise BadTarget(f"{target} cannot be a stage: {exc}") from None
    stage = run.stats().stages[-1]
    try:
        while not stage.decision and run.state == "running":
            time.sleep(0.02)  # looking less often leaves the GIL to what is measured
            stage = run.stats().stages[-1]
    finally:
        run.cancel()
    try:
        run.wait(timeout=60)
    except (Cancelled, TimeoutError):
        pass
    except PipelineError as exc:
        click.echo(f"{target}: it failed while being measured: {exc}", err=True)
        sys.exit(1)
    decision = stage.decision or f"{stage.kind}: chosen before measuring"
    click.echo(f"{target} on {n} workers -> {decision}")


def show_report(report: _gilbench.Report, *, as_json: bool) -> None:
    """A report on stdout: JSON, a rich table on a terminal, or plain text."""
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    elif _is_terminal(sys.stdout):
        from rich.console import Console

        Console(file=sys.stdout).print(_gilbench.build_table(report))
    else:
        click.echo(report.render())


class _StatusLine:
    """What is being measured, on one line of a terminal (nothing elsewhere); it is
    written between measurements, never during one."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.live = _is_terminal(stream)

    def show(self, what: str) -> None:
        if self.live:
            self.stream.write(f"\r\x1b[Kmeasuring: {what}")
            self.stream.flush()

    def clear(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


@main.command(
    "doctor", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("-m", "module", is_flag=True, help="Run a module (as python -m does), not a file.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    metavar="SECONDS",
    help="Give up on a script still running after this long: report every thread's stack "
    "and what it waits for. Default: wait for it (a script whose threads are stuck on "
    "locks for good is reported at once either way).",
)
@click.option(
    "--ignore",
    multiple=True,
    metavar="PATTERN",
    help="Do not report lock orders where a lock's name, or where it was made or taken "
    "(file:line), matches this pattern (fnmatch; repeatable).",
)
@click.option(
    "--libraries",
    is_flag=True,
    help="Check the locks of installed packages too, not only the script's own code.",
)
@click.argument("script", metavar="SCRIPT")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def doctor_command(
    module: bool,
    timeout: float | None,
    ignore: tuple[str, ...],
    libraries: bool,
    script: str,
    args: tuple[str, ...],
) -> None:
    """Run SCRIPT (with ARGS) with threading's locks replaced by conveyor.sync's
    checking ones, and report lock-order inversions (a then b here, b then a there,
    even if this run did not hang), waits made while holding a lock, and deadlocks
    with their cycle and every thread's stack.

    Exit status: 1 if a problem was found, else the script's own.
    """
    from .sync import _doctor

    if not module and not os.path.isfile(script):
        raise click.BadParameter(f"no such file: {script}", param_hint="SCRIPT")
    diagnosis = _doctor.diagnose(
        [script, *args], module=module, timeout=timeout, ignore=ignore, libraries=libraries
    )
    code = diagnosis.exit_code if diagnosis.healthy else 1
    if diagnosis.stuck is not None:  # its threads can never be joined: leave without them
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
