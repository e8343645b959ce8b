"""conveyor: producer-consumer pipelines on threads and processes.

Bounded channels between stages, results in input order, the first error stops
the run and names the stage, the worker and the item; Ctrl-C and dead workers
leave nothing behind.
"""

from __future__ import annotations

from ._channels import Channel as Channel
from ._channels import ChannelStats as ChannelStats
from ._errors import Cancelled as Cancelled
from ._errors import Closed as Closed
from ._errors import PipelineError as PipelineError
from ._errors import RemoteError as RemoteError
from ._errors import StageError as StageError
from ._errors import WorkerCrashed as WorkerCrashed
from ._observe._stats import RunStats as RunStats
from ._observe._stats import StageStats as StageStats
from ._observe._stats import WorkerStatus as WorkerStatus
from ._pipeline import Pipeline as Pipeline
from ._pipeline import SupportsProcess as SupportsProcess
from ._run import Run as Run
from ._workers._context import WorkerInfo as WorkerInfo
from ._workers._context import current_worker as current_worker

__version__ = "0.1.0"

__all__ = [
    "Cancelled",
    "Channel",
    "ChannelStats",
    "Closed",
    "Pipeline",
    "PipelineError",
    "RemoteError",
    "Run",
    "RunStats",
    "StageError",
    "StageStats",
    "SupportsProcess",
    "WorkerCrashed",
    "WorkerInfo",
    "WorkerStatus",
    "current_worker",
]
