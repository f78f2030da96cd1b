"""The events engines produce, before they are stored with a job id and sequence number."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Event types shared by every engine parser (DESIGN.md "Event").
PROGRESS = "progress"
CHECKPOINT = "checkpoint.saved"
CHECKPOINT_SYNCED = "checkpoint.synced"  # copied into the job folder (off the GPU host)
SAMPLE = "sample.saved"
PHASE = "phase"
RESUMED = "resumed"
WARNING = "warning"
ERROR = "error"
RESULT = "result"
STOPPED = "stopped"
LOG = "log"
COST = "cost"  # {usd, rate_usd_h}: money spent so far on rented hosts


@dataclass(frozen=True)
class EngineEvent:
    type: str
    data: dict[str, Any] = field(default_factory=dict)
