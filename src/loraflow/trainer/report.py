"""When the training loop reads its loss: reading a GPU tensor on the host waits for the GPU to finish.

Each step's loss stays a device tensor; the host reads them (one sync) only when a report is due: every
`every_s` seconds at most, or when the loop forces it (a checkpoint, a sample, the end). The report then
carries the mean loss of the steps since the previous one. With `every_s` 0 (a CPU, where reading is
free) every step is reported with its own loss.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


class LossReport:
    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.last = clock()
        self.pending: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss)

    def due(self, forced: bool = False) -> bool:
        return bool(self.pending) and (forced or self.clock() - self.last >= self.every_s)

    def read(self) -> float:
        """The mean loss since the last read; waits for the GPU to finish those steps."""
        mean = float(torch.stack(self.pending).mean())
        self.pending.clear()
        self.last = self.clock()
        return mean
