"""What a job will take and cost before anything is rented.

Time is predicted in parts a user can check against their own experience (set-up, caching, steps,
samples, transfer) from the GPU throughput table; cost is the offer's hourly price times that time.
The same numbers decide which offer to rent: the cheapest *job*, not the cheapest hour.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loraflow.catalog import gpu_table
from loraflow.dataset.holdout import holdout_count
from loraflow.evaluation.plan import checks_effect
from loraflow.spec import TrainSpec

SETUP_S = 180.0  # image start and package install on a warm machine
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


@dataclass(frozen=True)
class Estimate:
    gpu: str
    usd_per_hour: float  # the offer's: all of its compute.gpus GPUs
    setup_s: float
    caching_s: float
    steps_s: float
    samples_s: float
    transfer_s: float
    offer_id: int | None = None
    gpus: int = 1
    check_s: float = 0.0  # the effect check and scorecard, run on the host before it is let go

    @property
    def total_s(self) -> float:
        return self.setup_s + self.caching_s + self.steps_s + self.samples_s + self.transfer_s + self.check_s

    @property
    def cost_usd(self) -> float:
        return round(self.usd_per_hour * self.total_s / 3600, 4)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "total_s": round(self.total_s, 1),
            "cost_usd": self.cost_usd,
            "scaling_efficiency": round(scaling_efficiency(self.gpus), 4),
        }


def model_kind(spec: TrainSpec) -> str:
    if spec.base_model == "tiny-flux":
        return "tiny"
    arch = spec.catalog_entry.arch
    if spec.catalog_entry.estimate_kind:
        return spec.catalog_entry.estimate_kind
    if arch == "wan":
        return {"t2v-1.3B": "wan-1.3b", "t2v-A14B": "wan-a14b"}.get(str(spec.catalog_entry.musubi_task), "wan-14b")
    return {"qwen_image": "qwen-image"}.get(arch, arch if arch in ("flux", "sdxl") else "flux")


def scaling_efficiency(gpus: int) -> float:
    """The table's data-parallel efficiency for `gpus` on one machine (catalog/gpus.yaml `scaling`),
    interpolated between the listed counts."""
    points = sorted((int(n), float(e)) for n, e in gpu_table()["scaling"].items())
    for (n0, e0), (n1, e1) in itertools.pairwise(points):
        if n0 <= gpus <= n1:
            return e0 + (e1 - e0) * (gpus - n0) / (n1 - n0)
    return points[-1][1]


def table_row(gpu: str) -> str:
    """The throughput table's row for a provider's GPU name: Vast.ai's names are the table's; other providers
    spell them differently ("A100 PCIe", "RTX 6000 Ada", "A100 SXM"): matched without case and spaces, the
    table's name extending the provider's. "RTX 4090" when nothing matches."""
    squash = gpu.lower().replace(" ", "")
    rows = [k for k in gpu_table() if k not in ("models", "scaling")]
    exact = [k for k in rows if k.lower().replace(" ", "") == squash]
    longer = [k for k in rows if k.lower().replace(" ", "").startswith(squash)] if squash else []
    return (exact or sorted(longer, key=len) or ["RTX 4090"])[0]


def seconds_per_step(spec: TrainSpec, gpu: str) -> float:
    """One optimizer step on one GPU at the spec's batch_size."""
    table = gpu_table()
    base = (table.get(gpu) or table.get(table_row(gpu)) or table["RTX 4090"])["s_per_step"]
    t = spec.training
    res = sum(r * r for r in t.resolution) / len(t.resolution) / (1024 * 1024)
    factor = table["models"][model_kind(spec)]["step_factor"]
    if model_kind(spec) == "tiny":
        res = 1.0
    return base * factor * max(res, 0.05) * t.batch_size * (1 + 0.1 * (spec.network.rank / 16 - 1))


def count_images(spec: TrainSpec) -> int:
    path = Path(spec.dataset.path).expanduser()
    if path.is_dir():
        return sum(1 for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) or 1
    return 20  # an archive: a typical LoRA dataset


def check_seconds(spec: TrainSpec, gpu: str, images: int) -> float:
    """The result check's time (docs/scorecard.md, bench/README.md): for the base model and each scored LoRA
    file (the kept checkpoints and the final one) the evaluation renders (prompts x seeds, twice with a
    trigger word, `evaluation.steps` forwards and a VAE decode each) and the held-out loss (4 noise draws of
    each reference image, at most 8: the held-out images, else the training images), at `evaluation.size`;
    a forward is a third of a training step at that size. The builtin trainer runs the check in its own
    process with the base model still loaded (evaluation/after_training.py); any other engine's process
    exits, so its check loads the base model again (read from the host's disk at about 1 GB/s)."""
    if not checks_effect(spec):
        return 0.0
    table, kind, e = gpu_table(), model_kind(spec), spec.evaluation
    res = 1.0 if kind == "tiny" else max(e.size * e.size / (1024 * 1024), 0.05)
    row = table.get(gpu) or table[table_row(gpu)]  # a provider's own spelling finds its row (table_row)
    forward = row["s_per_step"] * table["models"][kind]["step_factor"] * res / 3
    prompts = len(e.prompts or spec.sampling.prompts or [""])
    renders = prompts * e.seeds * (2 if spec.dataset.trigger_word else 1)
    reference = holdout_count(e.holdout, images) or images  # what the check's held-out loss reads
    per_file = renders * (e.steps + 1) * forward + min(reference, 8) * 4 * forward
    steps, every = spec.training.steps, spec.checkpointing.every_n_steps
    files = min(spec.checkpointing.keep_last, steps // every) + (1 if steps % every else 0)
    reload = 0.0 if spec.engine.name == "builtin" else float(table["models"][kind]["download_gb"])
    return reload + (max(files, 1) + 1) * per_file


def estimate(
    spec: TrainSpec,
    gpu: str,
    usd_per_hour: float,
    inet_down_mbps: float = 1000,
    inet_up_mbps: float = 500,
    remote: bool = True,
    images: int | None = None,
    offer_id: int | None = None,
) -> Estimate:
    images = images if images is not None else count_images(spec)
    kind = model_kind(spec)
    per_step = seconds_per_step(spec, gpu)
    steps = spec.training.steps
    download_gb = gpu_table()["models"][kind]["download_gb"] if remote else 0
    setup = (SETUP_S if remote else 10.0) + download_gb * 8000 / max(inet_down_mbps, 1)
    caching = images * max(len(spec.training.resolution), 1) * per_step * 0.4
    s = spec.sampling
    points = (steps // s.every_n_steps if s.every_n_steps else 0) + (1 if s.at_end else 0)
    samples = points * len(s.prompts) * s.steps * per_step * 0.3
    checkpoints = math.ceil(steps / spec.checkpointing.every_n_steps)
    lora_mb = 0.0 if kind == "tiny" else 18.0 * spec.network.rank / 16 * 3  # LoRA + optimizer state
    dataset_mb = images * 1.5
    transfer = (dataset_mb + checkpoints * lora_mb) * 8 / max(inet_up_mbps, 1) if remote else 0.0
    # compute.gpus N: each GPU trains batch_size a step, so a step carries N times the images in one GPU's time
    # over the scaling efficiency; caching and samples run on rank 0 alone; the price is the offer's, for all N.
    steps_s = steps * per_step / scaling_efficiency(spec.compute.gpus)
    check = check_seconds(spec, gpu, images)
    return Estimate(gpu, usd_per_hour, setup, caching, steps_s, samples, transfer, offer_id, spec.compute.gpus, check)


def this_machine() -> tuple[str, str]:
    """This machine's device as a person knows it, and the throughput-table row that times it: the first
    NVIDIA GPU (matched by name, e.g. 'NVIDIA GeForce RTX 4090' -> 'RTX 4090'), else the CPU."""
    from loraflow.nvidia_smi import gpu_stats

    gpus = gpu_stats()
    if gpus:
        name = str(gpus[0]["name"])
        squashed = name.lower().replace(" ", "")
        rows = sorted((k for k in gpu_table() if k not in ("models", "scaling", "CPU")), key=len, reverse=True)
        row = next((k for k in rows if k.lower().replace(" ", "") in squashed), "RTX 4090")
        return name, row
    return f"CPU ({_cpu_model()})", "CPU"


def _cpu_model() -> str:
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def local_estimate(spec: TrainSpec) -> Estimate:
    """A run on this machine: its own device, no rental cost, nothing to transfer. A real model on a
    machine without a GPU is refused rather than timed: the throughput table's CPU row is the tiny model's."""
    from dataclasses import replace

    from loraflow.errors import UserInputError

    name, row = this_machine()
    if row == "CPU" and model_kind(spec) != "tiny":
        raise UserInputError(
            f"{name} has no NVIDIA GPU; {spec.base_model} needs one with about {spec.catalog_entry.min_vram_gb} GB",
            fix="set compute.provider: vastai to rent one (estimate then prices the offers), "
            "or use base_model: tiny-flux to try the pipeline on the CPU",
        )
    return replace(estimate(spec, row, 0.0, remote=False), gpu=name)
