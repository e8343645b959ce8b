"""What the benchmark drivers share: a child's result, and the runs of one case."""

from __future__ import annotations

import json
import statistics
import subprocess
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Runs", "child_result"]


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
