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
import math
import re
import shlex
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

import tomli_w
from safetensors import safe_open
from safetensors.torch import save_file

from loraflow.engines import kohya  # the kohya family: prompt file, model paths, sampling arguments
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
from loraflow.hints import hint_for, match_hint
from loraflow.layout import JobLayout
from loraflow.media.video import VIDEO_EXTENSIONS, VideoNeeds
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.monitor.lines import LineSplitter
from loraflow.monitor.tqdm import parse_tqdm
from loraflow.spec import TrainSpec
from loraflow.video_options import VIDEO_OPTIONS, video_settings  # noqa: F401  (checked with the spec)

REPO = "kohya-ss/musubi-tuner"
PIN = "30c658c4"  # main, v0.3.4 (2026-06-24): Wan 2.1 and Wan 2.2 (A14B) training
OUTPUT = "musubi"
DATASET = "dataset.toml"
PROMPTS = kohya.PROMPTS
ARGS = "args.json"
SCRIPT = "train.sh"
SETUP = "setup_musubi.sh"
SCRIPTS = "src/musubi_tuner"  # where the entry points live in the checkout
STEP_FILE = re.compile(r"-step(\d{8})\.safetensors$")
STATE_DIR = re.compile(r"-step(\d{8})-state$")
SEGMENT = re.compile(r"^from-(\d{8})$")
# trainer_base.sample_images: <name>_<step:06d>_<prompt:02d>_<YYYYmmddHHMMSS>_<seed>, one-frame samples as
# save_images_grid's `<that>_000.png`
SAMPLE = re.compile(r"_(\d{6})_(\d{2})_\d{14}(?:_\d+)?(?:_\d{3})?\.(png|jpg|webp)$")
OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "prodigy": "prodigyopt.Prodigy", "adafactor": "Adafactor"}


def out_dir(layout: JobLayout) -> str:
    return str(PurePosixPath(layout.root, OUTPUT))


def segment_dir(layout: JobLayout, offset: int) -> str:
    return str(PurePosixPath(out_dir(layout), f"from-{offset:08d}"))


def segments(layout: JobLayout) -> list[tuple[int, Path]]:
    """Each run's own output folder with the cumulative step it started at, oldest first."""
    root = Path(out_dir(layout))
    found = [(int(m.group(1)), p) for p in root.glob("from-*") if p.is_dir() and (m := SEGMENT.match(p.name))]
    return sorted(found)


# --- video settings -------------------------------------------------------------------------------


def video_needs(spec: TrainSpec) -> VideoNeeds | None:
    """What each clip must give musubi, for the dataset checks before anything is rented; None for the engines
    that train on images only (they ignore clips)."""
    if spec.engine.name != "musubi":
        return None
    s = video_settings(spec)
    if s["frame_extraction"] == "full":  # the whole clip, trimmed to N*4+1 frames
        return VideoNeeds(1, 1, s.get("source_fps"))
    targets = tuple(s["target_frames"])
    return VideoNeeds(min(targets), max(targets), s.get("source_fps"), targets)


# --- rendering ------------------------------------------------------------------------------------


def media_kinds(layout: JobLayout) -> set[str]:
    """Which datasets to give musubi: those the prepared dataset has files for (both before it is prepared).
    A video dataset with no video in it is not rendered, so musubi never builds an empty one."""
    manifest = Path(layout.dataset) / "manifest.json"
    if not manifest.exists():
        return {"images", "videos"}
    names = [f["name"] for f in json.loads(manifest.read_text(encoding="utf-8"))["files"]]
    videos = sum(1 for n in names if PurePosixPath(n).suffix.lower() in VIDEO_EXTENSIONS)
    return {k for k, n in (("images", len(names) - videos), ("videos", videos)) if n}


def dataset_toml(spec: TrainSpec, layout: JobLayout) -> str:
    """One image and one video dataset per resolution, each with its own cache folder (musubi requires it)."""
    video, kinds = video_settings(spec), media_kinds(layout)
    general = {
        "caption_extension": "." + spec.dataset.caption_extension,
        "batch_size": spec.training.batch_size,
        "enable_bucket": True,
        "bucket_no_upscale": False,
    }
    datasets: list[dict[str, Any]] = []
    cache = PurePosixPath(layout.engine, "cache")
    for res in spec.training.resolution:
        common = {"resolution": [res, res], "num_repeats": spec.dataset.repeats}
        if "images" in kinds:
            datasets.append(
                {"image_directory": layout.dataset, "cache_directory": str(cache / f"images-{res}"), **common}
            )
        if "videos" in kinds:
            datasets.append(
                {"video_directory": layout.dataset, "cache_directory": str(cache / f"videos-{res}"), **common, **video}
            )
    return tomli_w.dumps({"general": general, "datasets": datasets})


def prompts_file(spec: TrainSpec) -> str:
    """kohya's prompt file; `--f 1` gives one-frame samples (images), which the bundle's sample pages show."""
    return kohya.prompts_file(spec, " --f 1")


def model_files(spec: TrainSpec) -> dict[str, str]:
    return kohya.model_paths(spec, spec.catalog_entry.musubi_files)


def scheduler_name(name: str, warmup: int) -> str:
    return "constant_with_warmup" if name == "constant" and warmup else name


def train_args(spec: TrainSpec, layout: JobLayout, offset: int = 0) -> list[str]:
    """wan_train_network.py's arguments, in the order of musubi's docs/wan.md example plus loraflow's fixes."""
    t, n = spec.training, spec.network
    entry, files = spec.catalog_entry, model_files(spec)
    args = ["--task", str(entry.musubi_task), "--dit", files["dit"]]
    if "dit_high_noise" in files:  # Wan 2.2 A14B: one LoRA trained over both experts, switched at the boundary
        args += ["--dit_high_noise", files["dit_high_noise"]]
    args += ["--vae", files["vae"], "--t5", files["t5"]]
    if "clip" in files:
        args += ["--clip", files["clip"]]
    precision = "no" if t.precision == "fp32" else t.precision
    args += [
        "--dataset_config",
        str(PurePosixPath(layout.engine, DATASET)),
        "--sdpa",
        "--mixed_precision",
        precision,
    ]
    if t.quantize != "none":
        args += ["--fp8_base", "--fp8_scaled"]  # scaled fp8 of bf16 weights: musubi's better-quality fp8
    if t.blocks_to_swap:
        args += ["--blocks_to_swap", str(t.blocks_to_swap)]
    args += [
        "--optimizer_type",
        OPTIMIZERS[t.optimizer],
        "--learning_rate",
        str(t.learning_rate),
        "--lr_scheduler",
        scheduler_name(t.lr_scheduler, t.lr_warmup_steps),
        "--lr_warmup_steps",
        str(t.lr_warmup_steps),
        "--max_grad_norm",
        str(t.max_grad_norm),
        "--optimizer_args",
        f"weight_decay={t.weight_decay}",
    ]
    if t.optimizer == "adafactor":
        args += ["relative_step=False", "scale_parameter=False", "warmup_init=False"]
    if t.gradient_checkpointing:
        args.append("--gradient_checkpointing")
    args += [
        "--gradient_accumulation_steps",
        str(t.gradient_accumulation),
        "--max_data_loader_n_workers",
        "2",
        "--persistent_data_loader_workers",
        "--network_module",
        "networks.lora_wan",
        "--network_dim",
        str(n.rank),
        "--network_alpha",
        str(n.alpha),
    ]
    if n.targets == "attention":  # lora_wan matches each module's name in full; the MLP is `ffn`
        args += ["--network_args", "exclude_patterns=['.*ffn.*']"]
    if n.dropout:
        args += ["--network_dropout", str(n.dropout)]
    sampling = "sigmoid" if t.timestep_sampling == "logit_normal" else t.timestep_sampling
    args += ["--timestep_sampling", sampling]
    if sampling == "shift":
        args += ["--discrete_flow_shift", str(t.timestep_shift)]
    args += ["--seed", str(t.seed)]
    if t.steps:
        args += ["--max_train_steps", str(t.steps - offset)]
    else:
        args += ["--max_train_epochs", str(t.epochs)]
    every = spec.checkpointing.every_n_steps
    keep = every * (spec.checkpointing.keep_last - 1)  # musubi keeps the files within this span and one more
    args += [
        "--save_every_n_steps",
        str(every),
        "--save_last_n_steps",
        str(keep),
        "--save_state",
        "--save_last_n_steps_state",
        str(keep),
        "--save_precision",
        {"fp32": "float", "fp16": "fp16", "bf16": "bf16"}[spec.output.dtype],
        "--output_dir",
        segment_dir(layout, offset),
        "--output_name",
        spec.name,
    ]
    return args + kohya.sample_and_extra_args(spec, layout)


def cache_steps(spec: TrainSpec, layout: JobLayout, python: str, root: Path) -> list[list[str]]:
    """The two caching scripts musubi needs before training; `--skip_existing` keeps a resume from redoing them."""
    files, config = model_files(spec), str(PurePosixPath(layout.engine, DATASET))
    latents = [python, str(root / SCRIPTS / "wan_cache_latents.py"), "--dataset_config", config, "--vae", files["vae"]]
    if "clip" in files:
        latents += ["--clip", files["clip"]]
    text = [python, str(root / SCRIPTS / "wan_cache_text_encoder_outputs.py"), "--dataset_config", config]
    text += ["--t5", files["t5"], "--batch_size", "16"]
    if spec.training.quantize != "none":
        text.append("--fp8_t5")
    return [[*latents, "--skip_existing"], [*text, "--skip_existing"]]


def launcher(spec: TrainSpec, python: str, root: Path) -> list[str]:
    """`accelerate launch` pinned to one process (on a multi-GPU rental it would otherwise start DDP)."""
    script = str(root / SCRIPTS / "wan_train_network.py")
    if spec.engine.options.get("launcher") == "python":
        return [python, script]
    precision = "no" if spec.training.precision == "fp32" else spec.training.precision
    return [
        python,
        "-m",
        "accelerate.commands.launch",
        "--mixed_precision",
        precision,
        "--num_cpu_threads_per_process",
        "1",
        "--num_processes",
        "1",
        script,
    ]


def shell(steps: list[list[str]], train: list[str]) -> str:
    """Caching then training in one shell; `exec` makes the trainer the launched process itself, so stopping
    or killing the job's process stops training, not only a wrapper."""
    return " && ".join([*(shlex.join(s) for s in steps), "exec " + shlex.join(train)])


# --- console output ----------------------------------------------------------------------------

_STEPS = re.compile(  # anchored: the caching bars and the sampling bars have other labels or none
    r"^steps:\s+(\d+)%\|[^|]*\|\s*(\d+)/(\d+)\s+\[([\d:]+)<([\d:?]+),\s+([\d.]+|\?)(s/it|it/s)"
    r"(?:,\s*avr_loss=([\d.eE+-]+|-?nan|-?inf))?"
)
_LOG = re.compile(r"^(INFO|WARNING|ERROR|DEBUG|CRITICAL):[\w.]+:(.*)$")  # logging.basicConfig's format
_GLUED = re.compile(r"(?<=\S)(?=(?:INFO|WARNING|ERROR|CRITICAL|DEBUG):[\w.]+:)")
_RESUME = re.compile(r"resume training from local state: (.+)$")


def offset_of(path: str) -> int:
    """The cumulative step a file of a run folder counts from: its `from-NNNNNNNN` folder's number."""
    m = re.search(r"from-(\d{8})/", path.replace("\\", "/"))
    return int(m.group(1)) if m else 0


class MusubiParser:
    """musubi's console: the `steps:` bar (run-local count, made cumulative), save/state/resume lines, the
    caching scripts' log lines and errors."""

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self.offset = 0  # the step this run resumed at: musubi's bar and file names restart at 0
        self._pending: dict[str, Any] | None = None  # the newest step's bar, reported when it is complete
        self.nan_loss = False

    def feed(self, chunk: bytes) -> list[EngineEvent]:
        return [e for line in self._lines.feed(chunk) for e in self.parse_line(line)]

    def flush(self) -> list[EngineEvent]:
        return [e for line in self._lines.flush() for e in self.parse_line(line)] + self._release()

    def parse_line(self, line: str) -> list[EngineEvent]:
        """A log record written while the bar is drawn (no newline after a bar) shares its line: split it off."""
        out: list[EngineEvent] = []
        for part in _GLUED.split(line):
            log = _LOG.match(part.strip())
            out += self.parse_message((log.group(2) if log else part).strip())
        return out

    def _progress(self, bar: re.Match[str]) -> list[EngineEvent]:
        """A step's last bar line carries its loss: tqdm redraws on update() with the previous step's
        avr_loss, then set_postfix() redraws with this step's. So a step is reported when the next one starts
        (or the output ends), with the loss of its last line."""
        data = parse_tqdm(bar)
        data["step"] += self.offset
        data["total"] += self.offset
        out: list[EngineEvent] = []
        loss = float(bar.group(8)) if bar.group(8) else None
        if loss is not None and not math.isfinite(loss):
            if not self.nan_loss:  # musubi trains on: the run is failed when it ends (see outcome)
                error = {"code": "nan_loss", "message": f"avr_loss={bar.group(8)} at step {data['step']}"}
                out.append(EngineEvent(ev.ERROR, {**error, "hint": hint_for("nan_loss")}))
            self.nan_loss = True
        elif loss is not None:
            data["loss"] = loss
        if self._pending and self._pending["step"] != data["step"]:
            out += self._release()
        if data["step"] > self.offset:
            self._pending = data
        return out

    def _release(self) -> list[EngineEvent]:
        pending, self._pending = self._pending, None
        return [EngineEvent(ev.PROGRESS, pending)] if pending else []

    def parse_message(self, text: str) -> list[EngineEvent]:
        bar = _STEPS.search(text)
        if bar:
            return self._progress(bar)
        m = re.match(r"saving checkpoint: (.+)$", text)
        if m:
            path = m.group(1)
            step = STEP_FILE.search(path)
            if step:
                cumulative = offset_of(path) + int(step.group(1))
                return [EngineEvent(ev.CHECKPOINT, {"step": cumulative, "path": path})]
            return [EngineEvent(ev.LOG, {"message": f"LoRA saved: {path}"})]
        m = _RESUME.match(text)
        if m:
            state = STATE_DIR.search(m.group(1).rstrip("/"))
            self.offset = offset_of(m.group(1)) + (int(state.group(1)) if state else 0)
            return [EngineEvent(ev.RESUMED, {"step": self.offset})]
        if text.startswith("running training"):
            return [EngineEvent(ev.PHASE, {"phase": "training"})]
        if text.startswith("Encoding dataset [") or text.startswith("Encoding with T5"):
            return [EngineEvent(ev.PHASE, {"phase": "caching"})]
        if text.startswith("Load dataset config from") or text.startswith("Loading DiT model from"):
            return [EngineEvent(ev.PHASE, {"phase": "preparing"})]
        m = re.match(r"total optimization steps / 学習ステップ数: (\d+)", text)
        if m:
            return [EngineEvent(ev.LOG, {"message": text, "total": int(m.group(1)) + self.offset})]
        hint = match_hint(text)
        if hint and (hint.code != "missing_file" or "Error" in text):
            return [EngineEvent(ev.ERROR, {"code": hint.code, "message": text[:500], "hint": hint.hint})]
        if "CalledProcessError" in text:
            return [EngineEvent(ev.ERROR, {"code": "crash", "message": text[:500], "hint": ""})]
        return []


# --- the engine --------------------------------------------------------------------------------


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
        args = train_args(spec, layout)
        script = (
            f"#!/usr/bin/env bash\n# musubi-tuner launch rendered by loraflow for job {job_id}\n"
            f"# engine: {REPO}@{PIN}\nset -euo pipefail\ncd {shlex.quote(str(root))}\n"
            + "\n".join(shlex.join(step) for step in cache_steps(spec, layout, python, root))
            + "\n"
            + shlex.join(launcher(spec, python, root) + args)
            + "\n"
        )
        return {
            DATASET: dataset_toml(spec, layout),
            PROMPTS: prompts_file(spec),
            ARGS: json.dumps({"script": "wan_train_network.py", "args": args}, indent=2) + "\n",
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
        """The newest whole state folder, by cumulative step (its run folder's offset + musubi's step)."""
        states = []
        for offset, folder in segments(layout):
            for path in folder.glob(f"{spec.name}-step*-state"):
                m = STATE_DIR.search(path.name)
                if m and state_complete(path):
                    states.append((offset + int(m.group(1)), path))
        return max(states) if states else None

    def command(self, spec: TrainSpec, layout: JobLayout, python: str) -> Command:
        root = engine_dir("musubi", spec.engine.options)
        python = engine_python(root, spec.engine.options) if python == "auto" else python
        point = self.resume_point(spec, layout)
        offset = point[0] if point and spec.training.steps else 0
        train = launcher(spec, python, root) + train_args(spec, layout, offset)
        if point and spec.training.steps:
            train += ["--resume", str(point[1])]
        argv = ["bash", "-c", shell(cache_steps(spec, layout, python, root), train)]
        return Command(argv, env_names=["HF_TOKEN"], env={"PYTHONUNBUFFERED": "1"}, cwd=str(root))

    def parser(self, spec: TrainSpec) -> MusubiParser:
        return MusubiParser()

    def final_lora(self, spec: TrainSpec, layout: JobLayout) -> str:
        """In the newest run's folder (the first run's before any ran)."""
        found = segments(layout)
        folder = str(found[-1][1]) if found else segment_dir(layout, 0)
        return str(PurePosixPath(folder, f"{spec.name}.safetensors"))

    def checkpoints(self, spec: TrainSpec, layout: JobLayout) -> list[tuple[int, Path, bool]]:
        out = []
        for offset, folder in segments(layout):
            for path in folder.glob(f"{spec.name}-step*.safetensors"):
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
        for _, folder in segments(layout):
            for path in folder.glob(f"{spec.name}-step*-state"):
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
        for step, path, ok in self.checkpoints(spec, layout):
            state = path.with_name(path.name.removesuffix(".safetensors") + "-state")
            if ok:
                found.append((step, path, {"state": state} if state.is_dir() else {}))
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
        dest = Path(layout.root) / f"{spec.name}.safetensors"
        with safe_open(self.final_lora(spec, layout), "pt") as f:
            metadata = {**(f.metadata() or {}), "loraflow.format": "kohya"}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        tmp = dest.with_name(dest.name + ".partial")
        save_file(state, str(tmp), metadata=metadata)
        tmp.replace(dest)
        return str(dest)

    def outcome(self, exit_code: int | None, final_exists: bool, parser: object = None) -> Outcome:
        if getattr(parser, "nan_loss", False):
            return Outcome(False, False, None, "musubi-tuner trained with a NaN or infinite loss")
        return outcome_for("musubi-tuner", exit_code, final_exists)


def state_complete(path: Path) -> bool:
    """accelerate's save_state writes the random states after the weights, optimizer and scheduler: a folder
    with them and a whole weights file was not cut short."""
    weights = path / "model.safetensors"
    return (path / "random_states_0.pkl").is_file() and weights.is_file() and safetensors_header(weights) is not None
