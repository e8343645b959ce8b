"""Channels: one contract (``_base``), one module per transport."""

from __future__ import annotations

from ._base import CHANNEL_KINDS, Channel, ChannelStats, Full
from ._memory import MemoryChannel

__all__ = ["CHANNEL_KINDS", "Channel", "ChannelStats", "Full", "MemoryChannel"]
