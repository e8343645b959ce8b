"""Stacks of workers, for the stall watchdog's report.

A stack is a list of ``(filename, line, function)``, the outermost call first (the
order of a Python traceback). Three sources:

* a thread of this process: its frame in ``sys._current_frames()``;
* a coroutine: its chain of awaits (``cr_await``), which is where a suspended task
  waits;
* a worker process: the dump ``faulthandler`` writes (most recent call first, one
  block per thread) when the process gets ``STACK_SIGNAL``; see ``_child``.

Frames of conveyor's own machinery before the stage's code (the worker loop, the
thread bootstrap) are dropped, so that a report starts where the user's code does.
"""

from __future__ import annotations

import linecache
import os
import re
import sys
import threading
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from types import FrameType

__all__ = [
    "Frames",
    "by_value_code",
    "coroutine_frames",
    "format_frames",
    "parse_faulthandler",
    "thread_frames",
    "trim",
]

Frames = list[tuple[str, int, str]]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_THREADING = os.path.abspath(threading.__file__)
_FRAME_LINE = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+) in (?P<name>.*)$')
_THREAD_HEAD = re.compile(r"^(?:Current thread|Thread) (?P<ident>0x[0-9a-fA-F]+)")


def _frames_of(frame: FrameType | None) -> Frames:
    out: Frames = []
    while frame is not None:
        out.append((frame.f_code.co_filename, frame.f_lineno or 0, frame.f_code.co_name))
        frame = frame.f_back
    out.reverse()
    return out


def thread_frames(ident: int | None) -> Frames:
    """The stack of the thread of this process with ``threading`` ident ``ident``."""
    if ident is None:
        return []
    return _frames_of(sys._current_frames().get(ident))


def coroutine_frames(coro: Any) -> Frames:
    """Where a coroutine (or generator) is suspended: its chain of awaits."""
    out: Frames = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        out.append((frame.f_code.co_filename, frame.f_lineno or 0, frame.f_code.co_name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out


def parse_faulthandler(
    text: str, dynamic: dict[str, list[tuple[str, int, int]]] | None = None
) -> list[tuple[str, Frames]]:
    """``faulthandler``'s dump as (thread header, frames outermost first) per thread;
    ``dynamic`` names the files of ``<dynamic-code>`` (see :func:`by_value_code`)."""
    threads: list[tuple[str, Frames]] = []
    head, frames = "", cast("Frames", [])
    for line in text.splitlines():
        m = _THREAD_HEAD.match(line)
        if m is not None:
            if frames or head:
                threads.append((head, frames[::-1]))
            head, frames = f"thread {m.group('ident')}", []
            continue
        f = _FRAME_LINE.match(line)
        if f is not None:
            filename = f.group("file")
            lineno, name = int(f.group("line")), f.group("name")
            if filename == "<dynamic-code>" and dynamic:
                places = [p for p, first, last in dynamic.get(name, ()) if first <= lineno <= last]
                if len(set(places)) == 1:
                    filename = places[0]
            frames.append((filename, lineno, name))
    if frames or head:
        threads.append((head, frames[::-1]))
    return threads


def _ours(filename: str, i: int) -> bool:
    # a worker process starts in the launcher's ``python -c`` code: "<string>" first
    return (
        filename.startswith(_PACKAGE)
        or filename == _THREADING
        or (i == 0 and filename == "<string>")
    )


def trim(frames: Frames) -> Frames:
    """Drop the leading frames of conveyor's machinery and of ``threading``'s bootstrap,
    up to the first frame of other code; a stack that is all conveyor's (a worker
    waiting for input) keeps its conveyor frames."""
    for i, (filename, _, _) in enumerate(frames):
        if not _ours(filename, i):
            return frames[max(0, i - 1) :]  # with the frame that called the user's code
    return [f for i, f in enumerate(frames) if not _ours(f[0], i) or f[0].startswith(_PACKAGE)]


def by_value_code(target: Any) -> dict[str, list[tuple[str, int, int]]]:
    """Where the functions a worker process got by value come from.

    cloudpickle sends functions that cannot be imported (``__main__``'s, closures,
    lambdas) by value and names their file ``<dynamic-code>``; line numbers are kept.
    This maps each function name reachable from the stage's ``target`` (its code,
    the code nested in it, the functions of its globals it names, the methods of a
    stage class) to ``(file, first line, last line)``, which tells the file back."""
    found: dict[str, list[tuple[str, int, int]]] = {}
    seen: set[int] = set()
    todo: list[Any] = [target]
    while todo and len(seen) < 1000:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, type):
            todo.extend(v for v in vars(obj).values() if callable(v))
            continue
        fn = getattr(obj, "__func__", obj)  # a bound method
        code = getattr(fn, "__code__", None)
        if code is None:
            continue
        codes = [code]
        while codes:
            c = codes.pop()
            lines = [n for _, _, n in c.co_lines() if n is not None]
            last = max(lines, default=c.co_firstlineno)
            found.setdefault(c.co_name, []).append((c.co_filename, c.co_firstlineno, last))
            codes.extend(k for k in c.co_consts if hasattr(k, "co_lines"))
            globs = getattr(fn, "__globals__", {})
            todo.extend(globs[n] for n in c.co_names if callable(globs.get(n)))
    return found


def format_frames(frames: Frames, indent: str = "  ") -> str:
    """Frames as a traceback's lines, with the source line where it can be read."""
    lines = []
    for filename, lineno, name in frames:
        lines.append(f'{indent}File "{filename}", line {lineno}, in {name}\n')
        source = linecache.getline(filename, lineno).strip()
        if source:
            lines.append(f"{indent}  {source}\n")
    return "".join(lines)
