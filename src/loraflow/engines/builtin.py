"""The builtin engine: loraflow's own Flux LoRA trainer, as a separate detached process.

When the job gets the effect check and scorecard, the same process runs them after training with the base
model still loaded (`python -m loraflow.evaluation.after_training`, its config engine/evaluation.json), so
the check does not load the model again; other engines' processes exit, and the runner checks their files
in a process of its own (running/scoring.py, running/remote_scoring.py)."""

from __future__ import annotations

from pathlib import PurePosixPath

from loraflow import __version__
from loraflow.engines.base import Command, EngineRequirements, Outcome
from loraflow.engines.external import min_vram_gb
from loraflow.evaluation import plan
from loraflow.layout import JobLayout
from loraflow.monitor.builtin_parser import BuiltinParser
from loraflow.monitor.events import EngineEvent
from loraflow.spec import TrainSpec
from loraflow.trainer.config import TrainerConfig
from loraflow.trainer.events import STOPPED_EXIT

CONFIG = "config.json"
EVAL_CONFIG = "evaluation.json"  # the result check run in the trainer's process


def trainer_config(
    spec: TrainSpec, layout: JobLayout, job_id: str, model_path: str, dataset_hash: str | None = None
) -> TrainerConfig:
    t, s = spec.training, spec.sampling
    entry = spec.catalog_entry
    # modelspec.* (here and trainer/export.py) by hand: no dependency writes it; sd-scripts' sai_model_spec isn't one
    metadata = {
        "modelspec.architecture": f"flux-1-{entry.variant or 'dev'}/lora",
        "ss_base_model_version": "flux1",
        "loraflow.base_model": spec.base_model,
        "loraflow.version": __version__,
        "loraflow.job_id": job_id,
    }
    if dataset_hash:
        metadata["loraflow.dataset_hash"] = dataset_hash
    return TrainerConfig(
        name=spec.name,
        job_id=job_id,
        model_path=model_path,
        dataset_dir=layout.dataset,
        output_dir=layout.output,
        trigger_word=spec.dataset.trigger_word,
        rank=spec.network.rank,
        alpha=spec.network.alpha,
        targets=spec.network.targets,
        lora_dropout=spec.network.dropout,
        steps=t.steps,
        epochs=t.epochs,
        batch_size=t.batch_size,
        gradient_accumulation=t.gradient_accumulation,
        processes=spec.compute.gpus,
        learning_rate=t.learning_rate,
        # diffusers' `constant` ignores warmup: the spec's warmup is `constant_with_warmup` there
        lr_scheduler="constant_with_warmup" if t.lr_scheduler == "constant" and t.lr_warmup_steps else t.lr_scheduler,
        lr_warmup_steps=t.lr_warmup_steps,
        optimizer=t.optimizer,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        resolutions=t.resolution,
        repeats=spec.dataset.repeats,
        seed=t.seed,
        precision=t.precision,
        gradient_checkpointing=t.gradient_checkpointing,
        compile=t.compile,
        cache_latents=t.cache_latents,
        cache_text_embeddings=t.cache_text_embeddings,
        timestep_sampling=t.timestep_sampling,
        timestep_shift=t.timestep_shift,
        guidance_scale=t.guidance_scale,
        quantize=t.quantize,
        caption_dropout=spec.dataset.captions.dropout_rate,
        max_sequence_length=64 if spec.base_model == "tiny-flux" else (256 if entry.variant == "schnell" else 512),
        sample_prompts=[spec.substitute_trigger(p) for p in s.prompts],
        sample_every=s.every_n_steps,
        sample_at_end=s.at_end,
        sample_width=s.width,
        sample_height=s.height,
        sample_seed=s.seed,
        sample_guidance=s.guidance_scale,
        sample_steps=s.steps,
        checkpoint_every=spec.checkpointing.every_n_steps,
        keep_last=spec.checkpointing.keep_last,
        lora_format=spec.output.lora_format,
        save_dtype=spec.output.dtype,
        metadata=metadata,
    )


def trainer_argv(python: str, gpus: int, config: str, check: str | None = None) -> list[str]:
    """The trainer's command line: itself on one GPU; under `accelerate launch` with one process per GPU.
    With `check` (the evaluation config) the trainer runs the result check after training, in its process."""
    trainer = ["-m", "loraflow.trainer", config] if check is None else \
        ["-m", "loraflow.evaluation.after_training", check, config]
    if gpus == 1:
        return [python, *trainer]
    launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1", "--num_processes", str(gpus),
              "--main_process_port", "0",  # a free port: two jobs on one machine never meet at 29500
              "--mixed_precision", "no", "--dynamo_backend", "no"]  # the trainer's config decides both
    return [python, *launch, *trainer]


class BuiltinEngine:
    name = "builtin"

    def requirements(self, spec: TrainSpec) -> EngineRequirements:
        vram = min_vram_gb(spec, 24)
        return EngineRequirements(
            min_vram_gb=vram,
            disk_gb=spec.compute.gpu.disk_gb,
            cuda="12.1",
            image="pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
            setup_script="pip install 'loraflow[train]'",
        )

    def render(
        self, spec: TrainSpec, layout: JobLayout, job_id: str, model_path: str, dataset_hash: str | None = None
    ) -> dict[str, str]:
        config = trainer_config(spec, layout, job_id, model_path, dataset_hash)
        files = {CONFIG: config.model_dump_json(indent=2) + "\n"}
        if plan.checks_effect(spec):  # the reference falls back to the training images when none is held out
            check = plan.eval_config(spec, job_id, layout, model_path, [], holdout_count=1)
            files[EVAL_CONFIG] = check.model_dump_json(indent=2) + "\n"
        return files

    def command(self, spec: TrainSpec, layout: JobLayout, python: str) -> Command:
        """One process; with compute.gpus N, `accelerate launch` starts N of them (torchrun underneath: it
        ends them all when one dies, so the runner sees one exit and resumes from the last checkpoint)."""
        import sys

        exe = sys.executable if python == "auto" else python
        check = str(PurePosixPath(layout.engine, EVAL_CONFIG)) if plan.checks_effect(spec) else None
        argv = trainer_argv(exe, spec.compute.gpus, str(PurePosixPath(layout.engine, CONFIG)), check)
        return Command(argv, env_names=["HF_TOKEN"])

    def parser(self, spec: TrainSpec) -> BuiltinParser:
        return BuiltinParser()

    def final_lora(self, spec: TrainSpec, layout: JobLayout) -> str:
        return str(PurePosixPath(layout.output, f"{spec.name}.safetensors"))

    def prepare_resume(self, spec: TrainSpec, layout: JobLayout) -> list[str]:
        return []  # the trainer itself skips damaged checkpoints and resumes from the newest good one

    def collect(self, spec: TrainSpec, layout: JobLayout) -> list[EngineEvent]:
        return []  # the trainer writes checkpoints/ and samples/ in the standard layout already

    def finish(self, spec: TrainSpec, layout: JobLayout) -> str:
        return self.final_lora(spec, layout)

    def outcome(self, exit_code: int | None, final_exists: bool, parser: object = None) -> Outcome:
        from loraflow.engines.external import outcome_for

        # Under `accelerate launch` a stopped trainer's STOPPED_EXIT reaches us as the launcher's 1: its
        # `stopped` event (the last thing rank 0 prints before that exit) says the same.
        if exit_code == STOPPED_EXIT or (exit_code not in (0, None) and getattr(parser, "stopped", False)):
            return Outcome(False, True, None, "stopped with a checkpoint")
        return outcome_for("the trainer", exit_code, final_exists)
