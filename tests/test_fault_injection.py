"""Fault injection: random pipelines, random faults, one rule.

Hypothesis draws pipelines of 1 to 4 stages (thread and process workers, 1 to 4 of
them, small channels, ordered or not, with or without retries and timeouts) and a
fault plan: items that raise, kill their worker process (``os._exit``, SIGKILL),
hang past the stage's timeout, are slow, or return a result that cannot be pickled.
Every stage skips failed items, and every run must end (within a bound) with each
input item accounted for exactly once: in the output, or in ``run.failures``.

200 cases run by default, the same ones every time. For a longer, random search:
``CONVEYOR_FAULT_EXAMPLES=5000 CONVEYOR_FAULT_RANDOM=1 pytest tests/test_fault_injection.py``.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor as cv

EXAMPLES = int(os.environ.get("CONVEYOR_FAULT_EXAMPLES", "200"))
RANDOM = os.environ.get("CONVEYOR_FAULT_RANDOM", "") not in ("", "0")
RUN_BOUND = 60.0  # seconds any one run may take; only reached if something hangs

THREAD_FAULTS = ["raise", "slow"]
PROCESS_FAULTS = ["raise", "slow", "exit", "kill", "unpicklable", "hang"]


@dataclass(frozen=True)
class Faulty:
    """A stage: passes (id, hops) on as (id, hops + 1), unless the plan says otherwise
    for that id. Faults are deterministic: every delivery of the item behaves alike."""

    faults: dict[int, str] = field(default_factory=dict)

    def __call__(self, item: tuple[int, int]) -> Any:
        ident, hops = item
        fault = self.faults.get(ident)
        if fault == "raise":
            raise ValueError(f"item {ident} is bad")
        if fault == "slow":
            time.sleep(0.005)
        elif fault == "exit":
            os._exit(9)
        elif fault == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif fault == "hang":
            time.sleep(30)
        elif fault == "unpicklable":
            return (ident, threading.Lock())
        return (ident, hops + 1)


@dataclass(frozen=True)
class StagePlan:
    kind: str
    workers: int
    maxsize: int | None
    ordered: bool
    retries: int
    timeout: float | None
    faults: dict[int, str]


@st.composite
def plans(draw: st.DrawFn) -> tuple[int, list[StagePlan]]:
    n_items = draw(st.integers(0, 30))
    stages = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["thread", "process"]))
        allowed = THREAD_FAULTS if kind == "thread" else PROCESS_FAULTS
        timeout = draw(st.sampled_from([None, 0.3])) if kind == "process" else None
        if timeout is None:
            allowed = [f for f in allowed if f != "hang"]
        faults = draw(
            st.dictionaries(
                st.integers(0, max(0, n_items - 1)), st.sampled_from(allowed), max_size=4
            )
            if n_items
            else st.just({})
        )
        stages.append(
            StagePlan(
                kind=kind,
                workers=draw(st.integers(1, 4)),
                maxsize=draw(st.one_of(st.none(), st.integers(1, 8))),
                ordered=draw(st.booleans()),
                retries=draw(st.integers(0, 1)),
                timeout=timeout,
                faults=faults,
            )
        )
    return n_items, stages


def build(n_items: int, stages: list[StagePlan]) -> cv.Pipeline[Any]:
    p: cv.Pipeline[Any] = cv.Pipeline("faults").source([(i, 0) for i in range(n_items)])
    for i, s in enumerate(stages):
        p = p.map(
            Faulty(s.faults),
            kind=s.kind,
            workers=s.workers,
            maxsize=s.maxsize,
            ordered=s.ordered,
            retries=s.retries,
            backoff=0.0,
            timeout=s.timeout,
            on_error="skip",
            name=f"s{i}",
        )
    return p


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(plans())
def test_every_item_is_accounted_for(plan: tuple[int, list[StagePlan]]) -> None:
    n_items, stages = plan
    run = build(n_items, stages).run()
    timer = threading.Timer(RUN_BOUND, run.cancel)
    timer.daemon = True
    timer.start()
    try:
        out = list(run)
    finally:
        timer.cancel()
    assert run.state == "finished", f"the run did not end by itself ({run.state})"

    ids_out = [ident for ident, _ in out]
    failed = run.failures
    ids_failed = [f.item[0] for f in failed]
    # exactly once: in the output or in the failures, never both, never twice
    assert sorted(ids_out + ids_failed) == list(range(n_items))
    # outputs went through every stage
    assert all(hops == len(stages) for _, hops in out)
    # a failure is charged to the first stage whose fault the item met
    for f in failed:
        ident, hops = f.item
        assert f.stage == f"s{hops}"
        assert ident in stages[hops].faults
        assert stages[hops].faults[ident] in ("raise", "exit", "kill", "unpicklable", "hang")
    if all(s.ordered for s in stages):
        assert ids_out == sorted(ids_out)
    st_ = run.stats()
    assert sum(s.failed for s in st_.stages) == len(failed)
    assert st_[f"s{len(stages) - 1}"].items_out == len(out)
    assert sum(s.duplicates for s in st_.stages) == 0  # no stage streams here
