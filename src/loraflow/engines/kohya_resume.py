"""Resuming sd-scripts from a saved state so its step count, checkpoint names and end stay cumulative."""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath

from loraflow.engines.external import dataset_count, safetensors_header
from loraflow.engines.kohya_files import RESUME_DATASET
from loraflow.layout import JobLayout
from loraflow.spec import TrainSpec


def resume_repeat_factor(spec: TrainSpec, layout: JobLayout) -> int:
    """How many times the resumed view repeats the dataset so one epoch outlasts the whole run.

    A batch holds at most `batch_size` images, so the view's epoch has at least images x repeats x factor /
    batch_size batches: steps x accumulation of them are needed (epochs mode: the original epoch's
    batches x epochs x accumulation, at most `epochs x accumulation x batch_size` times the original)."""
    t = spec.training
    need = (t.steps or t.epochs or 1) * t.gradient_accumulation * t.batch_size
    images = dataset_count(layout)
    if t.steps and images:  # the prepared dataset's size keeps the view (and kohya's index lists) small
        return math.ceil(need / (images * spec.dataset.repeats))
    return need


def resume_args(spec: TrainSpec, layout: JobLayout, argv: list[str], step: int, state: Path) -> list[str]:
    """Resume at cumulative `step` so kohya's own step count, checkpoint names and end stay cumulative.

    train_network.py (48d368fa) multiplies the initial step by the gradient accumulation, takes whole
    epochs of *batches* off it and makes the rest its global_step: at step 40 of 30-batch epochs it would
    restart at 10, train to the end of the last epoch and name checkpoints by that count. So a resumed run
    reads the same images repeated into one epoch longer than the run (`dataset_resume.toml`): no epoch is
    skipped, global_step starts at `step` and the run stops at max_train_steps. The initial step is given
    divided by the accumulation because kohya multiplies it back; when it does not divide, it is rounded up
    (fewer than `accumulation` steps counted done untrained, rather than a checkpoint name reused). The
    skipped batches of a freshly shuffled view are a different, equally random draw.
    """
    out = list(argv)
    ga = spec.training.gradient_accumulation
    resume = ["--resume", str(state), "--skip_until_initial_step", "--initial_step"]
    if "--max_train_epochs" in out:  # the view's epochs are longer: give the run's own step count
        total = _max_train_steps(state.with_name(state.name.removesuffix("-state") + ".safetensors"))
        if not total:  # unknown: kohya's own (run-local) arithmetic rather than a run that never ends
            return [*out, *resume, str(step)]
        at = out.index("--max_train_epochs")
        out[at : at + 2] = ["--max_train_steps", str(total)]
    out[out.index("--dataset_config") + 1] = str(PurePosixPath(layout.engine, RESUME_DATASET))
    return [*out, *resume, str(-(-step // ga))]  # rounded up: never a step name from before the resume


def _max_train_steps(lora: Path) -> int | None:
    header = safetensors_header(lora)
    meta = (header or {}).get("__metadata__") or {}
    value = meta.get("ss_max_train_steps")
    return int(value) if value and str(value).isdigit() else None
