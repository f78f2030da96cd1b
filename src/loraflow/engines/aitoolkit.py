"""The ai-toolkit engine (ostris/ai-toolkit): its YAML job config, its console output, its resume traps.

Facts from shared/reference/ai-toolkit.md. Traps handled here:
- `${VAR}` in the config text is substituted from the environment and printed: nothing secret and no
  `${` ever goes into the rendered file.
- resume picks the newest `<name>*.safetensors` by *ctime* and trusts its header: before each launch
  damaged files are deleted and only the chosen checkpoint is left in the output folder.
- exit code 0 also on Ctrl-C: done means exit 0 and the final `<name>.safetensors`.
- Flux LoRAs come out in diffusers layout with alpha forced to rank; collection converts them.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sqlite3
import struct
import time
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

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
    store_checkpoint,
    sync_checkpoints,
    sync_samples,
)
from loraflow.errors import UserInputError
from loraflow.hints import match_hint
from loraflow.layout import JobLayout
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent
from loraflow.monitor.lines import LineSplitter
from loraflow.monitor.tqdm import parse_tqdm
from loraflow.spec import TrainSpec

REPO = "ostris/ai-toolkit"
PIN = "27a03a91"  # HEAD read for the reference notes (version 0.12.26)
IMAGE = "ostris/aitoolkit:latest"  # code at /app/ai-toolkit; the tag-to-commit map is not published
CONFIG = "aitk_config.yaml"
SETUP = "setup_ai_toolkit.sh"
OUTPUT = "aitk"  # training_folder under the job folder; the save root is aitk/<name>/
CKPT = re.compile(r"_(\d{9})\.safetensors$")
SAMPLE = re.compile(r"^\d+__(\d{9})_(\d+)\.(jpg|jpeg|png|webp)$")
ARCH = {"flux": "flux", "sdxl": "sdxl", "qwen_image": "qwen_image"}
SAVE_DTYPE = {"fp16": "float16", "bf16": "bf16", "fp32": "float32"}


def _total_steps(spec: TrainSpec, layout: JobLayout) -> int:
    if spec.training.steps:
        return spec.training.steps
    count = dataset_count(layout) or 1
    per_epoch = count * spec.dataset.repeats * len(spec.training.resolution) / spec.training.batch_size
    return max(1, math.ceil(per_epoch * (spec.training.epochs or 1)))


def _no_substitution(value: str, where: str) -> str:
    if "${" in value:
        raise UserInputError(
            f"'{value}' contains '${{', which ai-toolkit would replace from the environment",
            where=where,
            fix="remove the '$' before '{'",
        )
    return value


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


# Module-name pieces ai-toolkit's ignore_if_contains matches (diffusers names) to narrow its layer set.
_NARROWER = {
    "flux": {
        "modulation": ["norm1.linear", "norm1_context.linear", "norm.linear"],
        "mlp": ["ff.net", "ff_context.net", "proj_mlp", "proj_out"],
    },
    "qwen_image": {"modulation": ["img_mod", "txt_mod"], "mlp": ["img_mlp", "txt_mlp"]},
}


def network_config(spec: TrainSpec) -> dict[str, Any]:
    """ai-toolkit trains every Linear of the Flux blocks; the narrower presets drop layers by name."""
    n = spec.network
    net: dict[str, Any] = {"type": "lora", "linear": n.rank, "linear_alpha": _number(n.alpha)}
    if n.dropout:
        net["dropout"] = n.dropout
    layers = _NARROWER.get(spec.catalog_entry.arch)
    if layers and n.targets in ("default", "attention"):
        ignore = layers["modulation"] + (layers["mlp"] if n.targets == "attention" else [])
        net["network_kwargs"] = {"ignore_if_contains": ignore}
    return net


def scheduler_config(name: str, warmup: int) -> dict[str, Any]:
    """ai-toolkit's `linear` is torch's LinearLR (a ramp *up* from lr/3): give it the decay to 0 the spec means.
    Warmup exists only as `constant_with_warmup`; the field map refuses it with other schedules."""
    if name == "linear":
        return {"lr_scheduler": "linear", "lr_scheduler_params": {"start_factor": 1.0, "end_factor": 0.0}}
    if name == "constant" and warmup:
        return {"lr_scheduler": "constant_with_warmup", "lr_scheduler_params": {"num_warmup_steps": warmup}}
    return {"lr_scheduler": name}


def render_config(spec: TrainSpec, layout: JobLayout, job_id: str, model_path: str) -> dict[str, Any]:
    t, s, entry = spec.training, spec.sampling, spec.catalog_entry
    arch = ARCH.get(entry.arch, entry.arch)
    flow = arch in ("flux", "qwen_image")
    quantize = t.quantize != "none"
    model: dict[str, Any] = {
        "name_or_path": model_path,
        "arch": arch,
        "quantize": quantize,
        "quantize_te": quantize,
        "low_vram": t.low_vram,
    }
    if quantize:
        model["qtype"] = "qfloat8"
        model["qtype_te"] = "qfloat8"
    if arch == "qwen_image":
        model.update(
            {
                "quantize": True,
                "qtype": "uint3|ostris/accuracy_recovery_adapters/qwen_image_torchao_uint3.safetensors",
                "quantize_te": True,
                "qtype_te": "qfloat8",
                "low_vram": True,
            }
        )
    if entry.assistant_lora:
        model["assistant_lora_path"] = entry.assistant_lora
    prompts = [_no_substitution(spec.substitute_trigger(p), f"sampling.prompts[{i}]") for i, p in enumerate(s.prompts)]
    trigger = spec.dataset.trigger_word
    if trigger:
        _no_substitution(trigger, "dataset.trigger_word")
    if spec.dataset.captions.trigger_placement != "prepend":
        trigger = None  # ai-toolkit would prepend it to every caption lacking it
    captions = spec.dataset.captions
    # Cached embeddings would keep the trigger in a dropped caption and freeze a shuffled order.
    cache_text = t.cache_text_embeddings and not (captions.dropout_rate > 0 or captions.shuffle_tags)
    process: dict[str, Any] = {
        "type": "sd_trainer",
        "training_folder": str(PurePosixPath(layout.root, OUTPUT)),
        "device": "cuda:0",
        "trigger_word": trigger,
        "network": network_config(spec),
        "save": {
            "dtype": SAVE_DTYPE[spec.output.dtype],
            "save_every": spec.checkpointing.every_n_steps,
            "max_step_saves_to_keep": spec.checkpointing.keep_last,
            "push_to_hub": False,
        },
        "datasets": [
            {
                "folder_path": layout.dataset,
                "caption_ext": spec.dataset.caption_extension,
                "caption_dropout_rate": spec.dataset.captions.dropout_rate,
                "shuffle_tokens": spec.dataset.captions.shuffle_tags,
                "keep_tokens": spec.dataset.captions.keep_tokens,
                "cache_latents_to_disk": t.cache_latents,
                "resolution": list(t.resolution),
                "num_repeats": spec.dataset.repeats,
            }
        ],
        "train": {
            "batch_size": t.batch_size,
            "steps": _total_steps(spec, layout),
            "gradient_accumulation": t.gradient_accumulation,
            "train_unet": True,
            "train_text_encoder": False,
            "gradient_checkpointing": t.gradient_checkpointing,
            "noise_scheduler": "flowmatch" if flow else "ddpm",
            "optimizer": t.optimizer,
            "lr": t.learning_rate,
            **scheduler_config(t.lr_scheduler, t.lr_warmup_steps),
            "optimizer_params": {"weight_decay": t.weight_decay},
            "dtype": t.precision,
            "max_grad_norm": t.max_grad_norm,
            "cfg_scale": t.guidance_scale,
            # `shift` is refused for ai-toolkit by the field map: its own `shift` means something else
            "timestep_type": "linear" if t.timestep_sampling == "uniform" else "sigmoid",
            "cache_text_embeddings": cache_text or arch == "qwen_image",
            "skip_first_sample": True,
            "disable_sampling": not (s.every_n_steps or s.at_end),
        },
        "model": model,
        "sample": {
            "sampler": "flowmatch" if flow else "ddpm",
            "sample_every": s.every_n_steps or _total_steps(spec, layout),
            "width": s.width,
            "height": s.height,
            "prompts": prompts,
            "neg": "",
            "seed": s.seed,
            "walk_seed": True,
            "guidance_scale": s.guidance_scale,
            "sample_steps": s.steps,
        },
        "logging": {"log_every": 1, "use_ui_logger": True},
    }
    if t.seed is not None:
        process["training_seed"] = t.seed
    if spec.engine.options.get("process"):
        process.update(spec.engine.options["process"])
    return {
        "job": "extension",
        "config": {"name": spec.name, "process": [process]},
        "meta": {"name": "[name]", "version": "1.0", "loraflow_job_id": job_id, "loraflow_engine": f"ai-toolkit@{PIN}"},
    }


def save_root(spec: TrainSpec, layout: JobLayout) -> Path:
    return Path(layout.root) / OUTPUT / spec.name


# --- steps: ai-toolkit names saves by its loop index, the step being trained (from 0) ----------------


def held_steps(index: int) -> int:
    """Steps done in a numbered save: `_000000010` is written after training loop index 10, the 11th step."""
    return index + 1


def sample_steps(index: int, total: int) -> int:
    """Steps done when a sample round was drawn: in the loop after index N (N + 1 steps), or at the end
    (named `total`, after `total` steps); a baseline round (index 0) comes before any step."""
    return index + 1 if 0 < index < total else index


def set_training_step(path: Path, step: int) -> bool:
    """Make a save's `training_info.step` (where ai-toolkit resumes) the number of steps it holds.

    ai-toolkit writes the loop index there, so on resume it trains that index again: one step done twice.
    The file is rewritten with only its header changed; returns whether it needed it.
    """
    header = safetensors_header(path)
    if header is None:
        return False
    meta = dict(header.get("__metadata__") or {})
    info = json.loads(meta.get("training_info", "{}"))
    if info.get("step") == step:
        return False
    meta["training_info"] = json.dumps({**info, "step": step})
    header["__metadata__"] = meta
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads its header to 8 bytes
    with path.open("rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        f.seek(8 + size)
        tmp = path.with_name(path.name + ".partial")
        with tmp.open("wb") as out:
            out.write(struct.pack("<Q", len(raw)) + raw)
            shutil.copyfileobj(f, out)
    tmp.replace(path)
    return True


# --- console output -------------------------------------------------------------------------------

_BAR = r"\s*(\d+)%\|[^|]*\|\s*(\d+)/(\d+)\s+\[([\d:]+)<([\d:?]+),\s+([\d.]+|\?)(s/it|it/s)(.*)\]\s*$"
_POSTFIX = re.compile(r"lr:\s*([\d.eE+-]+)\s+loss:\s*([\d.eE+-]+)")
_TRAINING_FOLDER = re.compile(r'^"training_folder":\s*("(?:[^"\\]|\\.)*"),?$')  # from the config it prints


class AitkParser:
    """ai-toolkit's console: the job's own tqdm bar (filtered by its name) and its save/resume/error lines.

    Steps are counted as steps done, as the bar counts them since 27a03a91. Each loop step first sets the
    loss (tqdm redraws at once, still at the old count: that loss is the *next* step's) and then moves the
    count (redrawn only if 0.1 s passed since the last redraw). So a redraw whose count did not move with
    its loss is never taken as a step's loss; where `loss_log.db` is readable its exact values are used
    (its rows are named by the loop index, one less than the step done, and none is written for the first
    step of a run).
    """

    def __init__(self, job_name: str, loss_db: Path | None = None) -> None:
        self._lines = LineSplitter()
        self._bar = re.compile(rf"^{re.escape(job_name)}:{_BAR}")
        self._name = job_name
        self._last_step = -1
        self._run_start = 0  # the step this run of the engine started from
        self._prev: tuple[int, str | None] | None = None  # the last bar line: count, postfix
        self._loss: dict[int, tuple[float, float]] = {}  # step -> (lr, loss) read from the bar
        self._db = LossLog(loss_db) if loss_db else None
        self._db_fixed = loss_db is not None
        self.job_stopped = False
        self.nan_loss = False
        self._zeroed = 0  # `loss is nan` lines whose zeroed step has not been shown yet
        self._hinted: set[str] = set()

    def feed(self, chunk: bytes) -> list[EngineEvent]:
        return [e for line in self._lines.feed(chunk) for e in self.parse_line(line)]

    def flush(self) -> list[EngineEvent]:
        return [e for line in self._lines.flush() for e in self.parse_line(line)]

    def _progress(self, bar: re.Match[str]) -> list[EngineEvent]:
        post = _POSTFIX.search(bar.group(8))
        count = int(bar.group(2))
        shown = bar.group(8).strip(", ") or None
        prev, self._prev = self._prev, (count, shown)
        if not post:
            return []  # the bar before its first loss: no measurement yet
        value = (float(post.group(1)), float(post.group(2)))
        if prev == (count - 1, shown):
            # the count moved on under the same loss: that step's; and, tentatively, the next one's (a
            # redraw at this count with an equal loss would look the same and carries the next step's)
            self._loss.setdefault(count, value)
            self._loss[count + 1] = value
        elif prev != (count, shown):
            self._loss[count + 1] = value  # loss set before the count moved: the step being done
        if count <= max(self._last_step, self._run_start):
            return []  # nothing done yet, a redraw of the same step, or the resume step shown again
        shown_loss = self._loss.get(count)
        if shown_loss is None:
            return []  # a log with lines missing: the next line tells this step's loss
        exact = self._db.at(count - 1) if self._db is not None and count - 1 != self._run_start else None
        if exact and f"{exact[1]:.3e}" != f"{shown_loss[1]:.3e}":
            exact = None  # a row left from before a resume, not yet rewritten
        lr, loss = exact or shown_loss
        self._last_step = count
        for old in [k for k in self._loss if k <= count]:
            del self._loss[old]
        data = {**parse_tqdm(bar), "lr": lr, "loss": loss}
        if self._zeroed and loss == 0.0:  # after `loss is nan` ai-toolkit shows the 0.0 it put in its place
            del data["loss"]
            self._zeroed -= 1
        return [EngineEvent(ev.PROGRESS, data)]

    def _nan(self, text: str) -> list[EngineEvent]:
        """`loss is nan` (printed right after a bar fragment, before that step's own redraw): ai-toolkit
        zeroes the step's loss and trains on; the 0.0 it then shows is no loss, and the run fails at its end."""
        hint = match_hint(text)
        assert hint is not None
        self._zeroed += 1
        self.nan_loss = True
        if hint.code in self._hinted:
            return []
        self._hinted.add(hint.code)
        return [EngineEvent(ev.ERROR, {"code": hint.code, "message": text[:500], "hint": hint.hint})]

    def parse_line(self, line: str) -> list[EngineEvent]:
        text = line.strip()
        bar = self._bar.match(line)
        if bar:
            return self._progress(bar)
        m = _TRAINING_FOLDER.match(text)
        if m and not self._db_fixed:
            folder = Path(json.loads(m.group(1)))
            self._db = LossLog(folder / self._name / "loss_log.db") if folder.is_absolute() else None
            return []
        if text.startswith("Saved checkpoint to "):
            path = text.removeprefix("Saved checkpoint to ")
            m = CKPT.search(path)
            if m:
                return [EngineEvent(ev.CHECKPOINT, {"step": held_steps(int(m.group(1))), "path": path})]
            return [EngineEvent(ev.LOG, {"message": f"final LoRA saved: {path}", "final": path})]
        if text.startswith("#### IMPORTANT RESUMING FROM"):
            return [EngineEvent(ev.LOG, {"message": text.strip("# ")})]
        m = re.match(r"Found step (\d+) in metadata, starting from there", text)
        if m:
            self._run_start = self._last_step = int(m.group(1))
            self._prev = None
            self._loss.clear()
            if self._db is not None:
                self._db.reset()
            return [EngineEvent(ev.RESUMED, {"step": int(m.group(1))})]
        if text.startswith("Loading Flux model") or text.startswith("Loading transformer") or text == "Making pipe":
            return [EngineEvent(ev.PHASE, {"phase": "loading_model"})]
        if text.startswith("Caching latents") or text.startswith("Caching text embeddings"):
            return [EngineEvent(ev.PHASE, {"phase": "caching"})]
        if text.startswith("Running  1 process") or text.startswith("Running 1 process"):
            return [EngineEvent(ev.PHASE, {"phase": "starting"})]
        if text == "Job stopped":
            self.job_stopped = True
            return [EngineEvent(ev.STOPPED, {"step": max(self._last_step, 0)})]
        if text.startswith("# OOM during training step"):
            return [EngineEvent(ev.WARNING, {"message": text.strip("# ")})]
        if text.startswith("Error running job:"):
            message = text.removeprefix("Error running job:").strip()
            hint = match_hint(message)
            self._hinted.add(hint.code if hint else "crash")
            return [
                EngineEvent(
                    ev.ERROR,
                    {"code": hint.code if hint else "crash", "message": message, "hint": hint.hint if hint else ""},
                )
            ]
        hint = match_hint(text)
        if hint is not None and hint.code == "nan_loss":
            return self._nan(text)
        if hint and hint.code not in self._hinted and hint.code != "missing_file":
            self._hinted.add(hint.code)
            return [EngineEvent(ev.ERROR, {"code": hint.code, "message": text[:500], "hint": hint.hint})]
        return []


def guess_job_name(text: str) -> str:
    """The job name from the `# Running job: <name>` banner, for reading a log file on its own."""
    m = re.search(r"# Running job: (.+)", text)
    return m.group(1).strip() if m else ""


def read_loss_log(path: Path, after: int = -1) -> list[dict[str, float]]:
    """Exact per-step loss and learning rate from ai-toolkit's loss_log.db (read-only), rows after `after`.

    Its `step` is ai-toolkit's loop index (from 0): the row for step N is the loss of the (N+1)th step done.
    Rows are written every 0.25 s, so the newest may be missing while it runs or after a SIGKILL.
    """
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            rows = conn.execute(
                "SELECT s.step, s.wall_time, l.value_real, r.value_real FROM steps s "
                "LEFT JOIN metrics l ON l.step = s.step AND l.key = 'loss/loss' "
                "LEFT JOIN metrics r ON r.step = s.step AND r.key = 'learning_rate' "
                "WHERE s.step > ? ORDER BY s.step",
                (after,),
            ).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []  # being created, or locked past the timeout: the bar's values serve meanwhile
    return [{"step": int(s), "wall_time": w, "loss": loss, "lr": lr} for s, w, loss, lr in rows if loss is not None]


class LossLog:
    """loss_log.db read as the engine writes it: new rows are read at most every 0.2 s, on a miss."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._rows: dict[int, tuple[float, float]] = {}
        self._read_at = -1.0

    def reset(self) -> None:
        """After a resume the engine rewrites the rows after its resume step."""
        self._rows.clear()
        self._read_at = -1.0

    def at(self, index: int) -> tuple[float, float] | None:
        """(lr, loss) of loop index `index`, or None when it is not (yet) written."""
        if index not in self._rows and time.monotonic() - self._read_at > 0.2:
            self._read_at = time.monotonic()
            for row in read_loss_log(self.path, max(self._rows, default=-1)):
                self._rows[int(row["step"])] = (row["lr"], row["loss"])
        return self._rows.get(index)


# --- the engine --------------------------------------------------------------------------------


class AitkEngine:
    name = "ai-toolkit"

    def requirements(self, spec: TrainSpec) -> EngineRequirements:
        vram = min_vram_gb(spec, 24)
        return EngineRequirements(
            min_vram_gb=vram, disk_gb=spec.compute.gpu.disk_gb, cuda="12.8", image=IMAGE, setup_script=SETUP
        )

    def render(
        self, spec: TrainSpec, layout: JobLayout, job_id: str, model_path: str, dataset_hash: str | None = None
    ) -> dict[str, str]:
        config = render_config(spec, layout, job_id, model_path)
        text = yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        header = (
            f"# ai-toolkit job config rendered by loraflow for job {job_id}\n"
            f"# engine: {REPO}@{PIN} (Docker: {IMAGE}); run: python run.py {CONFIG}\n"
        )
        return {
            CONFIG: header + text,
            SETUP: setup_script(
                REPO,
                PIN,
                "requirements.txt",
                "venv/bin/pip install --quiet torch torchvision --index-url https://download.pytorch.org/whl/cu128\n",
            ),
        }

    def command(self, spec: TrainSpec, layout: JobLayout, python: str) -> Command:
        root = engine_dir("ai-toolkit", spec.engine.options)
        return Command(
            [
                engine_python(root, spec.engine.options) if python == "auto" else python,
                str(root / "run.py"),
                str(PurePosixPath(layout.engine, CONFIG)),
            ],
            env_names=["HF_TOKEN"],
            env={"PYTHONUNBUFFERED": "1", "DISABLE_TELEMETRY": "YES"},
            cwd=str(root),
        )

    def parser(self, spec: TrainSpec) -> AitkParser:
        return AitkParser(spec.name)

    def final_lora(self, spec: TrainSpec, layout: JobLayout) -> str:
        return str(save_root(spec, layout) / f"{spec.name}.safetensors")

    def checkpoints(self, spec: TrainSpec, layout: JobLayout) -> list[tuple[int, Path, bool]]:
        """(step, file, header ok) for each numbered checkpoint in the save root, by step."""
        root = save_root(spec, layout)
        out = []
        for path in root.glob(f"{spec.name}_*.safetensors"):
            m = CKPT.search(path.name)
            if m:
                out.append((held_steps(int(m.group(1))), path, safetensors_header(path) is not None))
        return sorted(out)

    def prepare_resume(self, spec: TrainSpec, layout: JobLayout) -> list[str]:
        """Leave exactly one loadable checkpoint (the newest good one) in the save root; return what was done.

        ai-toolkit resumes from the newest file by ctime and trusts its header, so a truncated newest file or
        files copied in the wrong order would resume from the wrong place or crash.
        """
        actions: list[str] = []
        ckpts = self.checkpoints(spec, layout)
        good = [c for c in ckpts if c[2]]
        for _step, path, ok in ckpts:
            if not ok:
                path.unlink()
                actions.append(f"deleted damaged checkpoint {path.name}")
        final = Path(self.final_lora(spec, layout))
        if final.exists() and safetensors_header(final) is None:
            final.unlink()
            actions.append("deleted damaged final LoRA")
        if good:
            chosen = good[-1]
            for step, path, _ in good[:-1]:
                store_checkpoint(layout.checkpoints, step, path)  # keep it in loraflow's own collection
                path.unlink()
                actions.append(f"moved {path.name} to checkpoints/step-{step:06d}")
            # (a good final LoRA is newer and resumed from: rewriting the save would make it the newest)
            if not final.exists() and set_training_step(chosen[1], chosen[0]):
                actions.append(f"{chosen[1].name} holds {chosen[0]} steps: resuming after step {chosen[0]}")
            actions.append(f"resuming from {chosen[1].name}")
        return actions

    def collect(self, spec: TrainSpec, layout: JobLayout) -> list[EngineEvent]:
        """Copy new checkpoints (with optimizer.pt) and sample rounds into the standard layout."""
        optimizer = save_root(spec, layout) / "optimizer.pt"
        found = [(step, path, {"optimizer.pt": optimizer}) for step, path, ok in self.checkpoints(spec, layout) if ok]
        samples = save_root(spec, layout) / "samples"
        files = list(samples.glob("*")) if samples.is_dir() else []
        total = _total_steps(spec, layout)
        return sync_checkpoints(layout.checkpoints, found) + sync_samples(
            layout.samples, files, SAMPLE, spec, step_of=lambda index: sample_steps(index, total)
        )

    def finish(self, spec: TrainSpec, layout: JobLayout) -> str:
        return finish_lora(Path(self.final_lora(spec, layout)), layout.root, spec.name, spec.output.lora_format)

    def outcome(self, exit_code: int | None, final_exists: bool, parser: AitkParser | None = None) -> Outcome:
        if parser is not None and parser.nan_loss:
            return Outcome(False, False, None, "ai-toolkit trained with a NaN loss (it zeroes it and goes on)")
        stopped = exit_code == 0 and not final_exists and parser is not None and parser.job_stopped
        return outcome_for("ai-toolkit", exit_code, final_exists, stopped)
