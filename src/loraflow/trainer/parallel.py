"""Data parallel through accelerate: one trainer process per GPU, started by `accelerate launch` (torchrun).

Every optimizer step trains a global batch of G micro-batches (G = processes x gradient_accumulation in the
config, or the checkpoint's G on a resume), numbered in order through the epoch's batch order. Each process
draws the random numbers of all G (caption dropout, latent sample, noise, noise level: cheap next to a
forward pass), so its generators stay equal to a single process's, and it trains only its own share of
A = G / processes micro-batches. DDP averages the gradients over the processes; with each loss divided by A
that average is the mean over all G, the gradient one process computes for the same global batch. So the
loss curve does not depend on the number of processes, and a checkpoint (whose generator states every
process shares) resumes exactly on any number of processes that divides G: fewer GPUs, more accumulation.

A single process (no WORLD_SIZE, or 1) uses none of this: the loop runs as it always did.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch


class SplitError(ValueError):
    """The global batch cannot be shared evenly by the processes launched."""


@dataclass
class Group:
    """This process's place in the group; `accelerator` is None in a single process."""

    world: int = 1
    rank: int = 0
    accelerator: Any = None

    @property
    def main(self) -> bool:
        """Rank 0: it builds the caches and owns events, checkpoints, samples and the final LoRA."""
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        return self.accelerator.device if self.accelerator is not None else None

    def share(self, global_batches: int) -> int:
        """This process's micro-batches per step (the local gradient accumulation)."""
        if global_batches % self.world:
            raise SplitError(
                f"a global batch of {global_batches} micro-batches cannot be split over {self.world} processes"
            )
        return global_batches // self.world

    def owns(self, index: int, global_batches: int) -> bool:
        """Whether micro-batch `index` (0..G-1) of a step is this process's: rank r trains a contiguous run."""
        return index // self.share(global_batches) == self.rank

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model under DDP (gradients of the trainable LoRA weights averaged at each sync); the frozen base
        is left out of DDP's start-up broadcast, as every process loaded the same weights from disk."""
        if self.accelerator is None:
            return model
        from torch.nn.parallel import DistributedDataParallel

        frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
        frozen += [n for n, _ in model.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
        return self.accelerator.prepare_model(model, device_placement=False)

    def syncing(self, model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager[Any]:
        """Accumulate without the all-reduce except on a process's last micro-batch of the step."""
        if self.accelerator is None or sync:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(model)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        return value if self.accelerator is None else self.accelerator.reduce(value, "mean")

    def agree(self, flag: bool) -> bool:
        """True on every process when any one has the flag (a stop signal or a pause reaches processes at
        different steps; all must stop after the same one)."""
        if self.accelerator is None:
            return flag
        if flag:
            self.accelerator.set_trigger()
        return bool(self.accelerator.check_trigger())

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (building the caches); the others wait on a barrier, then run it and
        find everything cached."""
        if self.accelerator is None:
            yield
            return
        with self.accelerator.main_process_first():
            yield

    def finish(self) -> None:
        if self.accelerator is not None and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def join(device: str, timeout_s: float) -> Group:
    """This process's group: accelerate's state over the environment `accelerate launch` set (gloo on CPUs,
    NCCL on GPUs), with `timeout_s` on every collective so a dead or hung rank ends the others instead of
    hanging them; the launcher then ends, and the runner resumes the job from its last checkpoint."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Group()
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision="no",  # the loop's own autocast decides precision, as in one process
        kwargs_handlers=[
            InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s)),
            DistributedDataParallelKwargs(broadcast_buffers=False),
        ],
    )
    return Group(accelerator.num_processes, accelerator.process_index, accelerator)
