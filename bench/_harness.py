"""What the benchmark drivers share: a child's result, the runs of one case, the
machine's load, and which checkout of conveyor was measured."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Runs",
    "background_share",
    "child_result",
    "conveyor_revision",
    "machine_busy_seconds",
    "tree_cpu_seconds",
]


def child_result(cid: str, proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The result a child printed (its last JSON line), or why there is none."""
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    tail = " | ".join((proc.stderr or "").strip().splitlines()[-3:])
    return {"cid": cid, "error": f"rc={proc.returncode} {tail}"}


@dataclass
class Runs:
    """The repetitions of one case: ``case`` is the script's own description of it."""

    case: Any
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def good(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if "seconds" in r and r.get("ok")]

    @property
    def problem(self) -> str:
        for r in self.runs:
            if "error" in r:
                return str(r["error"])
            if not r.get("ok"):
                return f"wrong results ({self.wrong(r)})"
        return ""

    def wrong(self, result: dict[str, Any]) -> str:
        """What was wrong with a run's results (its check)."""
        return str(result.get("check"))

    def values(self, key: str = "seconds") -> list[float]:
        return [float(r[key]) for r in self.good]

    def median(self, key: str = "seconds") -> float:
        return statistics.median(self.values(key))


# -- measuring, in the child interpreter ----------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def background_share(other_busy_s: float, seconds: float) -> float | None:
    """The share of the machine's CPU that other processes used; None for runs too short
    to tell (/proc/stat counts in clock ticks of 10 ms)."""
    if seconds < 0.1:
        return None
    return max(0.0, other_busy_s) / (seconds * (os.cpu_count() or 1))


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds of ``root`` and of every live descendant, each with its reaped children.

    A worker that exited and was reaped counts in its parent's cutime/cstime; helpers
    that are not our direct children (conveyor's launcher, a Manager) are found by
    walking the process tree, so every library pays for all of its processes.
    """
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        cpu[int(entry)] = sum(int(x) for x in fields[11:15]) / tick  # u+s time, cu+cs time
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(children.get(pid, ()))
    return total


def conveyor_revision() -> str:
    """ " (git 1a2b3c4)" for the checkout conveyor is imported from, "+dirty" if its
    sources have uncommitted changes; "" when it is not a git checkout."""
    import importlib.util

    spec = importlib.util.find_spec("conveyor")
    if spec is None or spec.origin is None:
        return ""
    src = os.path.dirname(spec.origin)
    try:
        git = ["git", "-C", src]
        rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--", "."], capture_output=True)
    except OSError:
        return ""
    sha = rev.stdout.strip()
    return f" (git {sha}{'+dirty' if dirty.stdout.strip() else ''})" if sha else ""
