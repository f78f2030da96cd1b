"""The stall detector: training that stops moving is noticed and acted on, never left billing.

Signals combined: no progress for `stall_minutes` while in the training phase (loading and caching
can be slow and do not count; a checkpoint or a sample written is progress: a slow disk or a long
sample grid is work, not a hang), the process gone without an exit code, GPU utilisation at 0 %
for `gpu_idle_minutes` when NVIDIA stats are available, and a trainer that announced its result
but has not exited a full window later (a hang in teardown still bills the GPU). The builtin trainer's
result check after training (phase `checking`, one phase line per step of it) that stops moving for
`stall_minutes` is ended the same way: its LoRA is written, and the runner checks it in a process of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

FINISHED = "finished"  # after the trainer's result: a phase no engine prints itself
CHECKING = "checking"  # the builtin trainer's result check, after its final LoRA is written


@dataclass(frozen=True)
class Stall:
    reason: str  # no_progress | gpu_idle | no_exit
    message: str


class StallDetector:
    def __init__(self, stall_minutes: float, gpu_idle_minutes: float, now: float) -> None:
        self.stall_s = stall_minutes * 60
        self.gpu_idle_s = gpu_idle_minutes * 60
        self.phase = "starting"
        self.last_progress = now
        self.gpu_busy_at = now

    def on_phase(self, phase: str, now: float) -> None:
        self.phase = phase
        self.last_progress = now
        self.gpu_busy_at = now

    def on_progress(self, now: float) -> None:
        self.last_progress = now

    def on_gpu(self, utilisation: list[float] | None, now: float) -> None:
        if utilisation is None or any(u > 0 for u in utilisation) or self.phase != "training":
            self.gpu_busy_at = now

    def on_result(self, now: float) -> None:
        """The trainer said it is done: from here only its exit is awaited, not progress."""
        self.on_phase(FINISHED, now)

    def check(self, now: float) -> Stall | None:
        if self.phase == FINISHED:
            waited = now - self.last_progress
            if waited > self.stall_s:
                minutes = f"{waited / 60:.1f}"
                return Stall("no_exit", f"the trainer wrote its result but had not exited {minutes} minutes later")
            return None
        if self.phase == CHECKING and now - self.last_progress > self.stall_s:
            minutes = f"{(now - self.last_progress) / 60:.1f}"
            return Stall("no_exit", f"the result check in the trainer made no progress for {minutes} minutes")
        if self.phase != "training":
            return None
        idle = now - self.last_progress
        if idle > self.stall_s:
            return Stall("no_progress", f"no training progress for {idle / 60:.1f} minutes")
        gpu_idle = now - self.gpu_busy_at
        if gpu_idle > self.gpu_idle_s:
            return Stall("gpu_idle", f"GPU utilisation at 0% for {gpu_idle / 60:.1f} minutes")
        return None
