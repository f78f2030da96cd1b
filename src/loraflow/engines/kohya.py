"""The kohya engine (kohya-ss/sd-scripts, what FluxGym runs): dataset TOML, prompts file, full argv.

Facts from shared/reference/kohya-fluxgym.md. Beyond FluxGym: `--network_train_unet_only`, a real
`--network_alpha`, bucketing on, `--save_state` for exact resume, `--blocks_to_swap` instead of the
deprecated `--split_mode`, and `--console_log_simple` so log lines are not wrapped at 80 columns (the
parser still joins wrapped Rich lines). After a resume kohya's own step counter restarts; loraflow
passes `--skip_until_initial_step --initial_step N` and keeps the cumulative step itself.
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

from loraflow.engines.base import Command, EngineRequirements, Outcome
from loraflow.engines.external import (
    dataset_count,
    engine_dir,
    engine_python,
    finish_lora,
    min_vram_gb,
    outcome_for,
    safetensors_header,
    setup_script,
    sync_checkpoints,
    sync_samples,
)
from loraflow.hints import hint_for, match_hint
from loraflow.layout import JobLayout
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.monitor.lines import LineSplitter
from loraflow.monitor.tqdm import parse_tqdm
from loraflow.spec import TrainSpec

REPO = "kohya-ss/sd-scripts"
PIN = "48d368fa"  # main, v0.10.1 (2026-02-16): Flux training merged from the sd3 branch
OUTPUT = "kohya"
DATASET = "dataset.toml"
RESUME_DATASET = "dataset_resume.toml"  # the one-epoch view a resumed run reads (see resume_args)
PROMPTS = "sample_prompts.txt"
ARGS = "args.json"
SCRIPT = "train.sh"
SETUP = "setup_sd_scripts.sh"
STEP_FILE = re.compile(r"-step(\d{8})\.safetensors$")
STATE_DIR = re.compile(r"-step(\d{8})-state$")
SAMPLE = re.compile(r"_(\d{6})_(\d{2})_\d{14}(?:_\d+)?\.(png|jpg|webp)$")
OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "prodigy": "Prodigy", "adafactor": "Adafactor"}
SCHEDULERS = {
    "constant": "constant",
    "linear": "linear",
    "cosine": "cosine",
    "cosine_with_restarts": "cosine_with_restarts",
}


def out_dir(layout: JobLayout) -> str:
    return str(PurePosixPath(layout.root, OUTPUT))


def caches_text(spec: TrainSpec) -> bool:
    """kohya refuses caption dropout and shuffling with cached text-encoder outputs: those win over the cache."""
    captions = spec.dataset.captions
    return spec.training.cache_text_embeddings and not (captions.dropout_rate > 0 or captions.shuffle_tags)


def dataset_toml(spec: TrainSpec, layout: JobLayout, repeat_factor: int = 1) -> str:
    """The dataset config; `repeat_factor` > 1 gives the one-epoch view a resumed run reads (see resume_args)."""
    ext = "." + spec.dataset.caption_extension
    captions = spec.dataset.captions
    general: dict[str, Any] = {
        "shuffle_caption": captions.shuffle_tags,
        "caption_extension": ext,
        "keep_tokens": captions.keep_tokens,
    }
    if captions.dropout_rate > 0:
        general["caption_dropout_rate"] = captions.dropout_rate
    datasets = []
    for res in spec.training.resolution:  # one [[datasets]] per resolution, as the kohya docs describe
        subset: dict[str, Any] = {"image_dir": layout.dataset, "num_repeats": spec.dataset.repeats * repeat_factor}
        if spec.dataset.trigger_word and captions.trigger_placement == "prepend":
            subset["class_tokens"] = spec.dataset.trigger_word  # used only for an image without a caption
        datasets.append(
            {
                "resolution": res,
                "batch_size": spec.training.batch_size,
                "enable_bucket": True,
                "min_bucket_reso": max(256, res // 2),
                "max_bucket_reso": res * 2,
                "bucket_reso_steps": 64,
                "bucket_no_upscale": True,
                "subsets": [subset],
            }
        )
    return tomli_w.dumps({"general": general, "datasets": datasets})


def prompts_file(spec: TrainSpec, extra: str = "") -> str:
    """The kohya family's prompt file: one line per prompt with its size, seed, steps and guidance
    (`extra` adds flags, e.g. musubi's `--f 1` for one-frame samples)."""
    s = spec.sampling
    lines = []
    for i, prompt in enumerate(s.prompts):
        text = spec.substitute_trigger(prompt).replace("\n", " ")
        lines.append(
            f"{text} --w {s.width} --h {s.height}{extra} --d {s.seed + i} --s {s.steps} --g {s.guidance_scale}"
        )
    return "\n".join(lines) + ("\n" if lines else "")


def model_paths(spec: TrainSpec, files: dict[str, str]) -> dict[str, str]:
    """Model files by role, under `engine.options.models_dir` (the operator's; `models` by default)."""
    models = Path(str(spec.engine.options.get("models_dir", "models")))
    return {role: str(models / name) for role, name in files.items()}


def _model_files(spec: TrainSpec) -> dict[str, str]:
    return model_paths(spec, spec.catalog_entry.kohya_files)


def sample_and_extra_args(spec: TrainSpec, layout: JobLayout) -> list[str]:
    """Sampling cadence and the passed-through `engine.options.args`, the same for kohya and musubi."""
    s, t = spec.sampling, spec.training
    args: list[str] = []
    if s.prompts and (s.every_n_steps or s.at_end):
        args += ["--sample_prompts", str(PurePosixPath(layout.engine, PROMPTS))]
        if s.every_n_steps or t.steps:  # at_end alone: a round at the last step
            args += ["--sample_every_n_steps", str(s.every_n_steps or t.steps)]
        else:
            args += ["--sample_every_n_epochs", str(t.epochs)]
    for key, value in (spec.engine.options.get("args") or {}).items():
        args += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return args


def train_args(spec: TrainSpec, layout: JobLayout) -> list[str]:
    """The arguments of flux_train_network.py (or sdxl_train_network.py), in FluxGym's order plus the fixes."""
    t, n = spec.training, spec.network
    entry, files = spec.catalog_entry, _model_files(spec)
    flux = entry.arch == "flux"
    args: list[str] = []
    if flux:
        args += [
            "--pretrained_model_name_or_path",
            files["transformer"],
            "--clip_l",
            files["clip_l"],
            "--t5xxl",
            files["t5xxl"],
            "--ae",
            files["ae"],
        ]
    else:
        args += ["--pretrained_model_name_or_path", files["checkpoint"], "--no_half_vae"]
    if t.cache_latents:
        args.append("--cache_latents_to_disk")
    args += [
        "--save_model_as",
        "safetensors",
        "--sdpa",
        "--persistent_data_loader_workers",
        "--max_data_loader_n_workers",
        "2",
        "--seed",
        str(t.seed),
    ]
    if t.gradient_checkpointing:
        args.append("--gradient_checkpointing")
    precision = "no" if t.precision == "fp32" else t.precision
    args += [
        "--mixed_precision",
        precision,
        "--save_precision",
        spec.output.dtype if spec.output.dtype != "fp32" else "float",
        "--network_module",
        "networks.lora_flux" if flux else "networks.lora",
        "--network_dim",
        str(n.rank),
        "--network_alpha",
        str(n.alpha),
        "--network_train_unet_only",
        *network_args(spec),
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
        "--gradient_accumulation_steps",
        str(t.gradient_accumulation),
        "--optimizer_args",
        f"weight_decay={t.weight_decay}",
    ]
    if t.optimizer == "adafactor":
        args += ["relative_step=False", "scale_parameter=False", "warmup_init=False"]
    if caches_text(spec):
        args += ["--cache_text_encoder_outputs", "--cache_text_encoder_outputs_to_disk"]
    if t.quantize != "none":
        args.append("--fp8_base")
    if t.blocks_to_swap:
        args += ["--blocks_to_swap", str(t.blocks_to_swap)]
    if t.steps:
        args += ["--max_train_steps", str(t.steps)]
    else:
        args += ["--max_train_epochs", str(t.epochs)]
    every = spec.checkpointing.every_n_steps
    keep = every * (spec.checkpointing.keep_last - 1)  # kohya keeps the files within this span *and* one more
    args += [
        "--save_every_n_steps",
        str(every),
        "--save_last_n_steps",
        str(keep),
        "--save_state",
        "--save_last_n_steps_state",
        str(keep),
        "--save_state_on_train_end",
        "--dataset_config",
        str(PurePosixPath(layout.engine, DATASET)),
        "--output_dir",
        out_dir(layout),
        "--output_name",
        spec.name,
    ]
    if flux:
        shift = ["--timestep_sampling", t.timestep_sampling if t.timestep_sampling != "logit_normal" else "sigmoid"]
        if t.timestep_sampling == "shift":
            shift += ["--discrete_flow_shift", str(t.timestep_shift)]
        args += [
            *shift,
            "--model_prediction_type",
            "raw",
            "--guidance_scale",
            str(t.guidance_scale),
            "--loss_type",
            "l2",
        ]
    args.append("--console_log_simple")
    return args + sample_and_extra_args(spec, layout)


def scheduler_name(name: str, warmup: int) -> str:
    """kohya refuses warmup with `constant` (diffusers ignores it): that is `constant_with_warmup`."""
    return "constant_with_warmup" if name == "constant" and warmup else SCHEDULERS[name]


def network_args(spec: TrainSpec) -> list[str]:
    """`--network_args` for the spec's targets (field_map refuses what lora_flux cannot express)."""
    out: list[str] = []
    if spec.catalog_entry.arch == "flux" and spec.network.targets == "default":  # attention + MLP, no modulation
        out += ["img_mod_dim=0", "txt_mod_dim=0", "single_mod_dim=0"]
    args = ["--network_args", *out] if out else []
    if spec.network.dropout:
        args += ["--network_dropout", str(spec.network.dropout)]
    return args


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


def script_name(spec: TrainSpec) -> str:
    return "flux_train_network.py" if spec.catalog_entry.arch == "flux" else "sdxl_train_network.py"


def launcher(spec: TrainSpec, python: str, root: Path) -> list[str]:
    """`accelerate launch` pinned to one process (on a multi-GPU rental it would otherwise start DDP)."""
    precision = "no" if spec.training.precision == "fp32" else spec.training.precision
    if spec.engine.options.get("launcher") == "python":
        return [python, str(root / script_name(spec))]
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
        str(root / script_name(spec)),
    ]


# --- console output ----------------------------------------------------------------------------

_STEPS = re.compile(  # anchored: kohya's `validation steps:` and `epoch validation steps:` bars are not training
    r"^steps:\s+(\d+)%\|[^|]*\|\s*(\d+)/(\d+)\s+\[([\d:]+)<([\d:?]+),\s+([\d.]+|\?)(s/it|it/s)"
    r"(?:,\s*avr_loss=([\d.eE+-]+|-?nan|-?inf))?"
)
_RICH = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d )?\s*(INFO|WARNING|ERROR|DEBUG|CRITICAL)\s+(.*?)\s*(\S+\.py:\d+)?\s*$"
)
_CONTINUATION = re.compile(r"^\s{20,}(\S.*?)\s*$")


class KohyaParser:
    """sd-scripts' console: the `steps:` bar (not the nameless sampling bars), save/state/resume lines, and
    Rich log records wrapped over several 80-column lines."""

    def __init__(self) -> None:
        self._lines = LineSplitter()
        self.offset = 0  # steps skipped on a resume: kohya's bar restarts at 0
        self._record: list[str] = []  # the lines of a Rich log record being joined
        self._last_step = -1
        self.accumulation = 1  # from the summary: kohya logs the initial step divided by it
        self.nan_loss = False

    def feed(self, chunk: bytes) -> list[EngineEvent]:
        return [e for line in self._lines.feed(chunk) for e in self._line(line)]

    def flush(self) -> list[EngineEvent]:
        out = [e for line in self._lines.flush() for e in self._line(line)]
        return out + self._end_record()

    def _end_record(self) -> list[EngineEvent]:
        """Join a Rich record's lines: a line filled to the full width was hard-broken mid-word (a long
        path), so it joins without a space; a shorter one broke at a space."""
        if not self._record:
            return []
        width = max(len(f) for f in self._record)
        text = self._record[0]
        for prev, fragment in zip(self._record, self._record[1:], strict=False):
            text += ("" if len(prev) == width else " ") + fragment
        self._record = []
        return self.parse_message(text)

    def _line(self, line: str) -> list[EngineEvent]:
        cont = _CONTINUATION.match(line)
        if cont and self._record:
            self._record.append(re.sub(r"\s+\S+\.py:\d+$", "", cont.group(1)).rstrip())
            return []
        out = self._end_record()
        rich = _RICH.match(line)
        if rich:
            self._record = [rich.group(2)]
            return out
        return out + self.parse_message(line.strip())

    def parse_message(self, text: str) -> list[EngineEvent]:
        bar = _STEPS.search(text)
        if bar:
            data = parse_tqdm(bar)
            data["step"] += self.offset
            data["total"] += self.offset
            loss = float(bar.group(8)) if bar.group(8) else None
            out: list[EngineEvent] = []
            if loss is not None and not math.isfinite(loss):
                if not self.nan_loss:  # kohya trains on: the run is failed when it ends (see outcome)
                    message = f"avr_loss={bar.group(8)} at step {data['step']}"
                    error = {"code": "nan_loss", "message": message, "hint": hint_for("nan_loss")}
                    out.append(EngineEvent(ev.ERROR, error))
                self.nan_loss = True
            elif loss is not None:
                data["loss"] = loss
            if data["step"] == self._last_step or data["step"] == self.offset:
                return out
            self._last_step = data["step"]
            return [*out, EngineEvent(ev.PROGRESS, data)]
        m = re.match(r"saving checkpoint: (.+)$", text)
        if m:
            step = STEP_FILE.search(m.group(1))
            if step:
                return [EngineEvent(ev.CHECKPOINT, {"step": int(step.group(1)), "path": m.group(1)})]
            return [EngineEvent(ev.LOG, {"message": f"LoRA saved: {m.group(1)}"})]
        m = re.match(r"skipping (\d+) steps", text)
        if m:
            self.offset = int(m.group(1)) * self.accumulation
            return [EngineEvent(ev.RESUMED, {"step": self.offset})]
        m = re.match(r"gradient accumulation steps / .*= (\d+)", text)
        if m:
            self.accumulation = int(m.group(1))
            return []
        if text.startswith("resume training from local state:"):
            return [EngineEvent(ev.LOG, {"message": text})]
        if text.startswith("running training") or text.startswith("running training / 学習開始"):
            return [EngineEvent(ev.PHASE, {"phase": "training"})]
        if text.startswith("caching latents") or text.startswith("caching Text Encoder outputs"):
            return [EngineEvent(ev.PHASE, {"phase": "caching"})]
        if text.startswith("loading image sizes") or text.startswith("make buckets"):
            return [EngineEvent(ev.PHASE, {"phase": "preparing"})]
        m = re.match(r"total optimization steps / 学習ステップ数: (\d+)", text)
        if m:
            return [EngineEvent(ev.LOG, {"message": text, "total": int(m.group(1))})]
        hint = match_hint(text)
        if hint and (hint.code != "missing_file" or "Error" in text):
            return [EngineEvent(ev.ERROR, {"code": hint.code, "message": text[:500], "hint": hint.hint})]
        if "CalledProcessError" in text:
            return [EngineEvent(ev.ERROR, {"code": "crash", "message": text[:500], "hint": ""})]
        return []


# --- the engine --------------------------------------------------------------------------------


class KohyaEngine:
    name = "kohya"

    def requirements(self, spec: TrainSpec) -> EngineRequirements:
        vram = min_vram_gb(spec, 16)
        return EngineRequirements(
            min_vram_gb=vram, disk_gb=spec.compute.gpu.disk_gb, cuda="12.4", image=None, setup_script=SETUP
        )

    def render(
        self, spec: TrainSpec, layout: JobLayout, job_id: str, model_path: str, dataset_hash: str | None = None
    ) -> dict[str, str]:
        args = train_args(spec, layout)
        root = engine_dir("kohya", spec.engine.options)
        argv = launcher(spec, "venv/bin/python", root) + args
        script = (
            "#!/usr/bin/env bash\n# kohya sd-scripts launch rendered by loraflow for job "
            + job_id
            + (f"\n# engine: {REPO}@{PIN}\ncd {shlex.quote(str(root))}\n" + shlex.join(argv) + "\n")
        )
        return {
            DATASET: dataset_toml(spec, layout),
            RESUME_DATASET: dataset_toml(spec, layout, resume_repeat_factor(spec, layout)),
            PROMPTS: prompts_file(spec),
            ARGS: json.dumps({"script": script_name(spec), "args": args}, indent=2) + "\n",
            SCRIPT: script,
            SETUP: setup_script(
                REPO,
                PIN,
                "requirements.txt",
                "venv/bin/pip install --quiet torch torchvision --index-url https://download.pytorch.org/whl/cu124\n",
            ),
        }

    def resume_point(self, spec: TrainSpec, layout: JobLayout) -> tuple[int, Path] | None:
        states = []
        for path in Path(out_dir(layout)).glob(f"{spec.name}-step*-state"):
            m = STATE_DIR.search(path.name)
            if m and (path / "train_state.json").is_file():
                states.append((int(m.group(1)), path))
        return max(states) if states else None

    def command(self, spec: TrainSpec, layout: JobLayout, python: str) -> Command:
        root = engine_dir("kohya", spec.engine.options)
        argv = launcher(
            spec, engine_python(root, spec.engine.options) if python == "auto" else python, root
        ) + train_args(spec, layout)
        point = self.resume_point(spec, layout)
        if point:  # the cumulative step is loraflow's, from the state folder's own name
            argv = resume_args(spec, layout, argv, *point)
        return Command(argv, env_names=["HF_TOKEN"], env={"PYTHONUNBUFFERED": "1", "COLUMNS": "200"}, cwd=str(root))

    def parser(self, spec: TrainSpec) -> KohyaParser:
        return KohyaParser()

    def final_lora(self, spec: TrainSpec, layout: JobLayout) -> str:
        return str(PurePosixPath(out_dir(layout), f"{spec.name}.safetensors"))

    def checkpoints(self, spec: TrainSpec, layout: JobLayout) -> list[tuple[int, Path, bool]]:
        out = []
        for path in Path(out_dir(layout)).glob(f"{spec.name}-step*.safetensors"):
            m = STEP_FILE.search(path.name)
            if m:
                out.append((int(m.group(1)), path, safetensors_header(path) is not None))
        return sorted(out)

    def prepare_resume(self, spec: TrainSpec, layout: JobLayout) -> list[str]:
        """Delete damaged LoRA files and state folders that lack their files, so --resume gets a whole one."""
        actions = []
        for _, path, ok in self.checkpoints(spec, layout):
            if not ok:
                path.unlink()
                actions.append(f"deleted damaged checkpoint {path.name}")
        for path in Path(out_dir(layout)).glob(f"{spec.name}-step*-state"):
            if not (path / "train_state.json").is_file():
                shutil.rmtree(path)
                actions.append(f"deleted incomplete state {path.name}")
        point = self.resume_point(spec, layout)
        if point:
            actions.append(f"resuming from {point[1].name} at step {point[0]}")
        return actions

    def collect(self, spec: TrainSpec, layout: JobLayout) -> list[EngineEvent]:
        """Copy new checkpoints (with their state folders) and sample rounds into the standard layout."""
        found = []
        for step, path, ok in self.checkpoints(spec, layout):
            state = path.with_name(path.name.removesuffix(".safetensors") + "-state")
            if ok:
                found.append((step, path, {"state": state} if state.is_dir() else {}))
        sample_dir = Path(out_dir(layout)) / "sample"
        files = list(sample_dir.glob(f"{spec.name}_*")) if sample_dir.is_dir() else []
        return sync_checkpoints(layout.checkpoints, found) + sync_samples(layout.samples, files, SAMPLE, spec)

    def finish(self, spec: TrainSpec, layout: JobLayout) -> str:
        return finish_lora(Path(self.final_lora(spec, layout)), layout.root, spec.name, spec.output.lora_format)

    def outcome(self, exit_code: int | None, final_exists: bool, parser: object = None) -> Outcome:
        if getattr(parser, "nan_loss", False):
            return Outcome(False, False, None, "sd-scripts trained with a NaN or infinite loss")
        return outcome_for("sd-scripts", exit_code, final_exists)
