"""conveyor: producer-consumer pipelines on threads and processes."""

from __future__ import annotations

from ._channels import Channel as Channel
from ._channels import ChannelStats as ChannelStats
from ._errors import Cancelled as Cancelled
from ._errors import Closed as Closed
from ._errors import PipelineError as PipelineError
from ._errors import StageError as StageError
from ._errors import WorkerCrashed as WorkerCrashed
