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

from pathlib import Path, PurePosixPath

import yaml

from loraflow.engines.aitoolkit_config import render_config, total_steps
from loraflow.engines.aitoolkit_files import (
    CKPT,
    CONFIG,
    IMAGE,
    PIN,
    REPO,
    SAMPLE,
    SETUP,
    held_steps,
    sample_steps,
    save_root,
)
from loraflow.engines.aitoolkit_models import CONVERTIBLE, arch_of, keep_native
from loraflow.engines.aitoolkit_parser import AitkParser
from loraflow.engines.aitoolkit_resume import set_training_step
from loraflow.engines.base import Command, EngineRequirements, Outcome
from loraflow.engines.external import (
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
from loraflow.layout import JobLayout
from loraflow.monitor.events import EngineEvent
from loraflow.spec import TrainSpec


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
        """Wan 2.2 A14B: ai-toolkit writes no `<name>.safetensors`, only `<name>_high_noise` and `_low_noise`."""
        suffix = "_low_noise" if spec.catalog_entry.experts else ""
        return str(save_root(spec, layout) / f"{spec.name}{suffix}.safetensors")

    def final_companions(self, spec: TrainSpec, layout: JobLayout) -> list[str]:
        """Wan 2.2 A14B: the high-noise expert's `<name>_high_noise.safetensors` beside the low-noise final
        (wan22_14b_model.save_lora writes one file per expert), copied back from a leased host with it."""
        if not spec.catalog_entry.experts:
            return []
        return [str(save_root(spec, layout) / f"{spec.name}_high_noise.safetensors")]

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
        total = total_steps(spec, layout)
        return sync_checkpoints(layout.checkpoints, found) + sync_samples(
            layout.samples, files, SAMPLE, spec, step_of=lambda index: sample_steps(index, total)
        )

    def finish(self, spec: TrainSpec, layout: JobLayout) -> str:
        final = Path(self.final_lora(spec, layout))
        if arch_of(spec) in CONVERTIBLE:
            return finish_lora(final, layout.root, spec.name, spec.output.lora_format)
        return keep_native(spec, final, layout.root)  # no converter knows these modules: ai-toolkit's own file

    def outcome(self, exit_code: int | None, final_exists: bool, parser: AitkParser | None = None) -> Outcome:
        if parser is not None and parser.nan_loss:
            return Outcome(False, False, None, "ai-toolkit trained with a NaN loss (it zeroes it and goes on)")
        stopped = exit_code == 0 and not final_exists and parser is not None and parser.job_stopped
        return outcome_for("ai-toolkit", exit_code, final_exists, stopped)
