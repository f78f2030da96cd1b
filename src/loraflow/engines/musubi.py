"""The musubi engine (kohya-ss/musubi-tuner, kohya's video trainer): Wan 2.1 / 2.2 text-to-video LoRAs.

Read from musubi-tuner at 30c658c4 (v0.3.4): a dataset TOML with `[[datasets]]` of `image_directory` and
`video_directory` (the same prepared folder: musubi picks images or videos by extension), two caching
scripts run before training (`wan_cache_latents.py`, `wan_cache_text_encoder_outputs.py`, with
`--skip_existing` so a resume does not encode again), then `wan_train_network.py` under `accelerate launch`.

Its console: accelerator.print lines on stdout (`running training / 学習開始`, `saving checkpoint: <path>`),
Python's default logging format on stderr (`INFO:musubi_tuner.utils.train_utils:saving state at step 10`),
and the tqdm `steps:` bar with `avr_loss` on stderr. Files: `<name>-step00000010.safetensors`,
`<name>-step00000010-state/` (accelerate's save_state, no train_state.json), the final `<name>.safetensors`.

Resume: `--resume <state>` restores the LoRA, optimizer and scheduler, but musubi's step counter and
checkpoint names restart at 0 ("TODO skip until initial step" in trainer_base.py) and it trains
`--max_train_steps` more. So each run writes its own folder `musubi/from-<cumulative step>/`, is given the
steps that remain, and loraflow adds the folder's offset to every step it reads: no name is reused and
the count stays cumulative. A decaying schedule would restart its decay on resume, so field_map refuses
linear and cosine schedules for musubi.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path, PurePosixPath

from safetensors import safe_open

from loraflow.engines.base import Command, EngineRequirements, Outcome
from loraflow.engines.external import (
    engine_dir,
    engine_python,
    min_vram_gb,
    outcome_for,
    safetensors_header,
    setup_script,
    store_samples,
    sync_checkpoints,
)
from loraflow.engines.kohya_files import PROMPTS  # the kohya family's prompt file
from loraflow.engines.musubi_arch import family
from loraflow.engines.musubi_config import cache_steps, dataset_toml, launcher, prompts_file, shell, train_args
from loraflow.engines.musubi_experts import (
    HIGH_SUFFIX,
    current,
    experts,
    high_final,
    low_final,
    marker,
    paired,
    states,
)
from loraflow.engines.musubi_files import (
    ARGS,
    DATASET,
    PIN,
    REPO,
    SAMPLE,
    SCRIPT,
    SETUP,
    STATE_DIR,
    STEP_FILE,
    out_dir,
    segment_dir,
    segments,
)
from loraflow.engines.musubi_parser import MusubiParser
from loraflow.layout import PAIR_FILE, JobLayout
from loraflow.media.video import VideoNeeds
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.spec import TrainSpec
from loraflow.video_options import VIDEO_OPTIONS, video_settings  # noqa: F401  (checked with the spec)


def video_needs(spec: TrainSpec) -> VideoNeeds | None:
    """What each clip must give musubi (or ai-toolkit training Wan), for the dataset checks before anything is
    rented; None for the engines and models that train on images only (they ignore clips). Image-to-video models
    go through the same checks, and need at least one usable clip (its first frame is the control)."""
    if spec.engine.name != "musubi" and spec.catalog_entry.arch != "wan":
        return None
    s, first = video_settings(spec), spec.catalog_entry.first_frame_control
    if s["frame_extraction"] == "full":  # the whole clip, trimmed to N*4+1 frames
        return VideoNeeds(1, 1, s.get("source_fps"), first_frame=first)
    targets = tuple(s["target_frames"])
    return VideoNeeds(min(targets), max(targets), s.get("source_fps"), targets, first)


class MusubiEngine:
    name = "musubi"

    def requirements(self, spec: TrainSpec) -> EngineRequirements:
        return EngineRequirements(
            min_vram_gb=min_vram_gb(spec, 12), disk_gb=spec.compute.gpu.disk_gb, cuda="12.4", setup_script=SETUP
        )

    def render(
        self, spec: TrainSpec, layout: JobLayout, job_id: str, model_path: str, dataset_hash: str | None = None
    ) -> dict[str, str]:
        root = engine_dir("musubi", spec.engine.options)
        python = "venv/bin/python"
        # Wan 2.2 A14B: the high-noise expert's run, then the low-noise one's (args.json: the low-noise run's,
        # the job's `<name>` file; args_high_noise.json the other)
        runs = [(e, train_args(spec, layout, e.first, e)) for e in experts(spec)] if paired(spec) else []
        args = runs[-1][1] if runs else train_args(spec, layout)
        trains = [a for _, a in runs] or [args]
        script = (
            f"#!/usr/bin/env bash\n# musubi-tuner launch rendered by loraflow for job {job_id}\n"
            f"# engine: {REPO}@{PIN}\nset -euo pipefail\ncd {shlex.quote(str(root))}\n"
            + "\n".join(shlex.join(step) for step in cache_steps(spec, layout, python, root))
            + "\n"
            + "".join(shlex.join(launcher(spec, python, root) + a) + "\n" for a in trains)
        )
        extra = {}
        if runs:
            high = json.dumps({"script": family(spec).train_script, "args": runs[0][1]}, indent=2) + "\n"
            extra[f"args{HIGH_SUFFIX}.json"] = high
        return {
            DATASET: dataset_toml(spec, layout),
            PROMPTS: prompts_file(spec, layout),
            ARGS: json.dumps({"script": family(spec).train_script, "args": args}, indent=2) + "\n",
            **extra,
            SCRIPT: script,
            SETUP: setup_script(
                REPO,
                PIN,
                None,
                "venv/bin/pip install --quiet torch torchvision --index-url https://download.pytorch.org/whl/cu124\n"
                "venv/bin/pip install --quiet -e . prodigyopt\n",
            ),
        }

    def resume_point(self, spec: TrainSpec, layout: JobLayout) -> tuple[int, Path] | None:
        """The newest whole state folder, by cumulative step (its run folder's offset + musubi's step); for two
        experts, of the expert that trains next."""
        if paired(spec):
            found = [(step, path) for step, path in states(spec, layout, current(spec, layout)) if state_complete(path)]
            return max(found) if found else None
        states_ = []
        for offset, folder in segments(layout):
            for path in folder.glob(f"{spec.name}-step*-state"):
                m = STATE_DIR.search(path.name)
                if m and state_complete(path):
                    states_.append((offset + int(m.group(1)), path))
        return max(states_) if states_ else None

    def host_outputs(self, spec: TrainSpec, layout: JobLayout) -> str:
        """Every launch reads its run folders (which state to resume, which expert is next, where the final file
        is): on a leased host they are mirrored into the job folder here and read from the copy."""
        return out_dir(layout)

    def resume_files(self, spec: TrainSpec, layout: JobLayout) -> list[str]:
        """What a new host needs to carry on: the whole state the next run resumes from and, for two experts,
        the high-noise expert's finished file (its presence is what starts the low-noise run)."""
        point = self.resume_point(spec, layout) if spec.training.steps else None
        high = high_final(spec, layout) if paired(spec) else None
        return [str(p) for p in (point[1] if point else None, high) if p is not None]

    def command(self, spec: TrainSpec, layout: JobLayout, python: str) -> Command:
        root = engine_dir("musubi", spec.engine.options)
        python = engine_python(root, spec.engine.options) if python == "auto" else python
        point = self.resume_point(spec, layout)
        expert = current(spec, layout) if paired(spec) else None
        start = expert.first if expert else 0
        offset = point[0] if point and spec.training.steps else start
        train = launcher(spec, python, root) + train_args(spec, layout, offset, expert)
        if point and spec.training.steps:
            train += ["--resume", str(point[1])]
        first = marker(spec, expert, offset) if expert else None
        argv = ["bash", "-c", shell(cache_steps(spec, layout, python, root), train, first)]
        return Command(argv, env_names=["HF_TOKEN"], env={"PYTHONUNBUFFERED": "1"}, cwd=str(root))

    def parser(self, spec: TrainSpec) -> MusubiParser:
        return MusubiParser()

    def final_lora(self, spec: TrainSpec, layout: JobLayout) -> str:
        """In the newest run's folder (the first run's before any ran); for two experts, the low-noise one's."""
        if paired(spec):
            return low_final(spec, layout)
        found = segments(layout)
        folder = str(found[-1][1]) if found else segment_dir(layout, 0)
        return str(PurePosixPath(folder, f"{spec.name}.safetensors"))

    def checkpoints(self, spec: TrainSpec, layout: JobLayout) -> list[tuple[int, Path, bool]]:
        out = []
        names = [e.output_name for e in experts(spec)] if paired(spec) else [spec.name]
        for offset, folder in segments(layout):
            for path in (p for name in names for p in folder.glob(f"{name}-step*.safetensors")):
                m = STEP_FILE.search(path.name)
                if m:
                    out.append((offset + int(m.group(1)), path, safetensors_header(path) is not None))
        return sorted(out)

    def prepare_resume(self, spec: TrainSpec, layout: JobLayout) -> list[str]:
        """Delete damaged LoRA files and state folders a kill cut short, so --resume gets a whole one."""
        actions = []
        for _, path, ok in self.checkpoints(spec, layout):
            if not ok:
                path.unlink()
                actions.append(f"deleted damaged checkpoint {path.parent.name}/{path.name}")
        names = [e.output_name for e in experts(spec)] if paired(spec) else [spec.name]
        for _, folder in segments(layout):
            for path in (p for name in names for p in folder.glob(f"{name}-step*-state")):
                if not state_complete(path):
                    shutil.rmtree(path)
                    actions.append(f"deleted incomplete state {folder.name}/{path.name}")
        point = self.resume_point(spec, layout)
        if point and spec.training.steps:
            actions.append(f"resuming from {point[1].parent.name}/{point[1].name} at step {point[0]}")
        return actions

    def collect(self, spec: TrainSpec, layout: JobLayout) -> list[EngineEvent]:
        """Copy new checkpoints (with their state folders) and sample rounds into the standard layout."""
        found = []
        high = high_final(spec, layout) if paired(spec) else None
        for step, path, ok in self.checkpoints(spec, layout):
            state = path.with_name(path.name.removesuffix(".safetensors") + "-state")
            extra = {"state": state} if state.is_dir() else {}
            if high is not None and not path.name.startswith(experts(spec)[0].output_name):
                extra[PAIR_FILE] = high  # from the low-noise expert's first save on, a checkpoint is a pair
            if ok:
                found.append((step, path, extra))
        return sync_checkpoints(layout.checkpoints, found) + self._samples(spec, layout)

    def _samples(self, spec: TrainSpec, layout: JobLayout) -> list[EngineEvent]:
        rounds: dict[int, list[tuple[int, Path]]] = {}
        for offset, folder in segments(layout):
            for path in (folder / "sample").glob(f"{spec.name}_*"):
                m = SAMPLE.search(path.name)
                if m:
                    rounds.setdefault(offset + int(m.group(1)), []).append((int(m.group(2)), path))
        prompts = [spec.substitute_trigger(p) for p in spec.sampling.prompts]
        events = []
        for step, images in sorted(rounds.items()):
            if (Path(layout.samples) / f"step-{step:06d}" / "index.json").exists():
                continue
            for item in store_samples(layout.samples, step, images, prompts, spec.sampling):
                data = {"step": step, "path": f"samples/{item['file']}", "prompt": item["prompt"]}
                events.append(EngineEvent(ev.SAMPLE, data))
        return events

    def finish(self, spec: TrainSpec, layout: JobLayout) -> str:
        """musubi saves `lora_unet_blocks_N_...` keys with alpha keys: already the kohya/ComfyUI layout, which
        is the only one field_map accepts for musubi; the file is copied with loraflow's format label."""
        # Here, not at the top: the service's submit door imports this module (video_needs), and torch's import
        # there held the GIL for seconds in a user's first submission (issue 29).
        from safetensors.torch import save_file

        dest = Path(layout.root) / f"{spec.name}.safetensors"
        copies = [(Path(self.final_lora(spec, layout)), dest)]
        high = high_final(spec, layout) if paired(spec) else None
        if high is not None:  # Wan 2.2 A14B: the high-noise expert's file beside it, the pair's other half
            copies.append((high, dest.with_name(f"{spec.name}{HIGH_SUFFIX}.safetensors")))
        for src, out in copies:
            with safe_open(str(src), "pt") as f:
                metadata = {**(f.metadata() or {}), "loraflow.format": "kohya"}
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
            tmp = out.with_name(out.name + ".partial")
            save_file(state, str(tmp), metadata=metadata)
            tmp.replace(out)
        return str(dest)

    def outcome(self, exit_code: int | None, final_exists: bool, parser: object = None) -> Outcome:
        if getattr(parser, "nan_loss", False):
            return Outcome(False, False, None, "musubi-tuner trained with a NaN or infinite loss")
        expert = getattr(parser, "expert_saved", None)
        if exit_code == 0 and not final_exists and expert == "high":  # Wan 2.2 A14B: the first of two runs
            return Outcome(False, False, None, "the high-noise expert is trained; the low-noise expert trains next",
                           more=True)
        return outcome_for("musubi-tuner", exit_code, final_exists)


def state_complete(path: Path) -> bool:
    """accelerate's save_state writes the random states after the weights, optimizer and scheduler: a folder
    with them and a whole weights file was not cut short."""
    weights = path / "model.safetensors"
    return (path / "random_states_0.pkl").is_file() and weights.is_file() and safetensors_header(weights) is not None
