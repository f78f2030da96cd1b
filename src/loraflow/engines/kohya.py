"""The kohya engine (kohya-ss/sd-scripts, what FluxGym runs): dataset TOML, prompts file, full argv.

Facts from shared/reference/kohya-fluxgym.md. Beyond FluxGym: `--network_train_unet_only`, a real
`--network_alpha`, bucketing on, `--save_state` for exact resume, `--blocks_to_swap` instead of the
deprecated `--split_mode`, and `--console_log_simple` so log lines are not wrapped at 80 columns (the
parser still joins wrapped Rich lines). After a resume kohya's own step counter restarts; loraflow
passes `--skip_until_initial_step --initial_step N` and keeps the cumulative step itself.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path, PurePosixPath

from loraflow.engines.base import Command, EngineRequirements, Outcome
from loraflow.engines.external import (
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
from loraflow.engines.kohya_config import dataset_toml, launcher, prompts_file, script_name, train_args
from loraflow.engines.kohya_files import (
    ARGS,
    DATASET,
    PIN,
    PROMPTS,
    REPO,
    RESUME_DATASET,
    SAMPLE,
    SCRIPT,
    SETUP,
    STATE_DIR,
    STEP_FILE,
    out_dir,
)
from loraflow.engines.kohya_parser import KohyaParser
from loraflow.engines.kohya_resume import resume_args, resume_repeat_factor
from loraflow.layout import JobLayout
from loraflow.monitor.events import EngineEvent
from loraflow.spec import TrainSpec


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
