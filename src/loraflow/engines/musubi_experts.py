"""Wan 2.2 A14B on musubi-tuner: both experts as one job, delivered as two LoRA files.

musubi's `--dit_high_noise` mode trains ONE LoRA that both experts share (wan_train_network.py swaps the DiT
under the same network at `--timestep_boundary`). ComfyUI's Wan 2.2 workflows load one LoRA per expert, and
ai-toolkit delivers two, so loraflow trains each expert in its own musubi run restricted to that expert's
timesteps, as musubi's docs/wan.md recommends for training one expert (`--dit` that expert, `--min_timestep` /
`--max_timestep` from its table: high noise 875-1000 and low noise 0-875 for T2V, 900 for I2V, the catalog's
`experts.boundary`, with `--preserve_distribution_shape`). The high-noise expert trains first, for the first
half of `training.steps` (as ai-toolkit's one run alternates the two, each gets half), saved as
`<name>_high_noise`; then the low-noise expert for the rest, saved as `<name>`. Every run writes its own
`from-<cumulative step>` folder (musubi_files), so progress, checkpoints and resume count across both runs:
a kill in either resumes that expert from its newest whole state, and a finished high-noise run is never
trained again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loraflow.engines.external import safetensors_header
from loraflow.engines.musubi_files import STATE_DIR, segment_dir, segments
from loraflow.layout import HIGH_NOISE, JobLayout
from loraflow.spec import TrainSpec

HIGH_SUFFIX = HIGH_NOISE
MARKER = "loraflow: musubi run"  # the line each expert run prints first (musubi_parser reads it)


@dataclass(frozen=True)
class Expert:
    name: str  # "high" or "low"
    role: str  # the catalog's musubi_files role of its DiT (`--dit` for this run)
    output_name: str
    first: int  # the cumulative step it starts at
    last: int  # the cumulative step it ends at
    timesteps: tuple[int, int]  # musubi's --min_timestep, --max_timestep


def paired(spec: TrainSpec) -> bool:
    """A job that trains two experts (Wan 2.2 A14B) in two musubi runs."""
    return bool(spec.catalog_entry.experts) and spec.engine.name == "musubi"


def high_steps(spec: TrainSpec) -> int:
    """The steps the high-noise expert trains: the first half."""
    return int(spec.training.steps or 0) // 2


def experts(spec: TrainSpec) -> tuple[Expert, Expert]:
    boundary = int(spec.catalog_entry.experts["boundary"])
    split, total = high_steps(spec), int(spec.training.steps or 0)
    high = Expert("high", "dit_high_noise", spec.name + HIGH_SUFFIX, 0, split, (boundary, 1000))
    low = Expert("low", "dit", spec.name, split, total, (0, boundary))
    return high, low


def expert_at(spec: TrainSpec, offset: int) -> Expert:
    """The expert a run folder starting at this cumulative step trains."""
    high, low = experts(spec)
    return high if offset < high.last else low


def high_final(spec: TrainSpec, layout: JobLayout) -> Path | None:
    """The high-noise expert's finished file: its run's final save, or its checkpoint at its last step (a
    kill between the two loses nothing), whole; None while it still trains."""
    high = experts(spec)[0]
    found = []
    for offset, folder in segments(layout):
        if offset >= high.last:
            continue
        names = [f"{high.output_name}.safetensors", f"{high.output_name}-step{high.last - offset:08d}.safetensors"]
        found += [folder / n for n in names if (folder / n).is_file() and safetensors_header(folder / n)]
    return found[-1] if found else None


def current(spec: TrainSpec, layout: JobLayout) -> Expert:
    """The expert the next run trains: the high-noise one until its file is finished."""
    high, low = experts(spec)
    return low if high_final(spec, layout) is not None else high


def states(spec: TrainSpec, layout: JobLayout, expert: Expert) -> list[tuple[int, Path]]:
    """(cumulative step, state folder) of an expert's runs, from its own run folders."""
    out = []
    for offset, folder in segments(layout):
        if expert_at(spec, offset).name != expert.name:
            continue
        for path in folder.glob(f"{expert.output_name}-step*-state"):
            m = STATE_DIR.search(path.name)
            if m and offset + int(m.group(1)) < expert.last:
                out.append((offset + int(m.group(1)), path))
    return out


def low_final(spec: TrainSpec, layout: JobLayout) -> str:
    """Where the low-noise expert's run writes `<name>.safetensors`: its newest run folder (its first one
    before any ran)."""
    low = experts(spec)[1]
    found = [str(folder) for offset, folder in segments(layout) if offset >= low.first]
    return f"{found[-1] if found else segment_dir(layout, low.first)}/{low.output_name}.safetensors"


def timestep_args(expert: Expert) -> list[str]:
    """musubi's docs/wan.md for training one expert: its timestep range, the distribution's shape kept."""
    low, high = expert.timesteps
    return ["--min_timestep", str(low), "--max_timestep", str(high), "--preserve_distribution_shape"]


def marker(spec: TrainSpec, expert: Expert, offset: int) -> str:
    """The line a run prints before musubi starts: which expert, and the cumulative step and total it counts
    from (musubi's own bar counts from 0 in every run)."""
    return (f"{MARKER} from step {offset} of {spec.training.steps}: the {expert.name}-noise expert "
            f"(timesteps {expert.timesteps[0]}-{expert.timesteps[1]}) as {expert.output_name}")
