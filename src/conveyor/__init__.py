"""conveyor: producer-consumer pipelines on threads and processes.

Bounded channels between stages, results in input order, the first error stops
the run and names the stage, the worker and the item; Ctrl-C and dead workers
leave nothing behind.

The public names are loaded on first use (PEP 562), so that ``import conveyor``
costs next to nothing, and neither do worker processes, which import only the
parts they run.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._errors import Cancelled as Cancelled
from ._errors import Closed as Closed
from ._errors import DeadlockError as DeadlockError
from ._errors import ItemTimeout as ItemTimeout
from ._errors import KindWarning as KindWarning
from ._errors import PipelineError as PipelineError
from ._errors import RemoteError as RemoteError
from ._errors import StageError as StageError
from ._errors import Stalled as Stalled
from ._errors import StallWarning as StallWarning
from ._errors import WorkerCrashed as WorkerCrashed

if TYPE_CHECKING:
    from . import shared as shared
    from ._channels._base import Channel as Channel
    from ._channels._base import ChannelStats as ChannelStats
    from ._observe._stats import Failure as Failure
    from ._observe._stats import RunStats as RunStats
    from ._observe._stats import StageStats as StageStats
    from ._observe._stats import StalledWorker as StalledWorker
    from ._observe._stats import WorkerStatus as WorkerStatus
    from ._pipeline import Pipeline as Pipeline
    from ._pipeline import SupportsProcess as SupportsProcess
    from ._run import Run as Run
    from ._workers._context import WorkerInfo as WorkerInfo
    from ._workers._context import current_worker as current_worker

__version__ = "0.1.0"

_LAZY = {
    "Channel": "._channels._base",
    "ChannelStats": "._channels._base",
    "Failure": "._observe._stats",
    "Pipeline": "._pipeline",
    "Run": "._run",
    "RunStats": "._observe._stats",
    "StageStats": "._observe._stats",
    "StalledWorker": "._observe._stats",
    "SupportsProcess": "._pipeline",
    "WorkerInfo": "._workers._context",
    "WorkerStatus": "._observe._stats",
    "current_worker": "._workers._context",
}

__all__ = [
    "Cancelled",
    "Channel",
    "ChannelStats",
    "Closed",
    "DeadlockError",
    "Failure",
    "ItemTimeout",
    "KindWarning",
    "Pipeline",
    "PipelineError",
    "RemoteError",
    "Run",
    "RunStats",
    "StageError",
    "StageStats",
    "StallWarning",
    "Stalled",
    "StalledWorker",
    "SupportsProcess",
    "WorkerCrashed",
    "WorkerInfo",
    "WorkerStatus",
    "current_worker",
]


# submodules reached as attributes: ``cv.shared.Counter``
_SUBMODULES = ("shared",)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'conveyor' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
