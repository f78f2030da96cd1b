"""ai-toolkit's YAML job config rendered from a spec, with nothing its `${VAR}` substitution would touch."""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any

from loraflow.engines.aitoolkit_files import OUTPUT, PIN
from loraflow.engines.aitoolkit_models import FLOW, QWEN_TE_CACHED, arch_of, dataset_extras, model_block, samples_block
from loraflow.engines.external import dataset_count
from loraflow.errors import UserInputError
from loraflow.layout import JobLayout
from loraflow.spec import TrainSpec

SAVE_DTYPE = {"fp16": "float16", "bf16": "bf16", "fp32": "float32"}


def total_steps(spec: TrainSpec, layout: JobLayout) -> int:
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
_NARROWER.update(flux_kontext=_NARROWER["flux"], chroma=_NARROWER["flux"], qwen_image_edit=_NARROWER["qwen_image"])


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


def grad_clip(max_grad_norm: float, accumulation: int) -> float:
    """ai-toolkit's `max_grad_norm` for the spec's. SDTrainer (27a03a91) calls `clip_grad_norm_` with it on
    every optimizer step, with no `> 0` guard, so 0 ("no clipping") would scale every gradient to zero: no
    clipping is an infinite norm. It backpropagates each of the N accumulated micro-batches unscaled, so the
    norm it clips is that of their sum, N times the mean that builtin and kohya clip: the limit is scaled to
    match."""
    return math.inf if max_grad_norm == 0 else _number(max_grad_norm * accumulation)


def render_config(spec: TrainSpec, layout: JobLayout, job_id: str, model_path: str) -> dict[str, Any]:
    t, s = spec.training, spec.sampling
    arch = arch_of(spec)
    flow = arch in FLOW
    model = model_block(spec, model_path)
    prompts = [_no_substitution(spec.substitute_trigger(p), f"sampling.prompts[{i}]") for i, p in enumerate(s.prompts)]
    trigger = spec.dataset.trigger_word
    if trigger:
        _no_substitution(trigger, "dataset.trigger_word")
    captions = spec.dataset.captions
    if captions.trigger_placement != "prepend" or captions.dropout_rate > 0:
        # ai-toolkit prepends its trigger_word to every caption lacking it (prepend's meaning, already done
        # in the prepared captions) and puts it back into a dropped caption, cached or not, so a dropped
        # caption would train the trigger alone instead of the empty caption the spec means
        trigger = None
    # Cached embeddings would freeze a shuffled order (ai-toolkit caches a dropped caption's embedding too).
    cache_text = t.cache_text_embeddings and not captions.shuffle_tags
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
                **dataset_extras(spec, layout),
            }
        ],
        "train": {
            "batch_size": t.batch_size,
            "steps": total_steps(spec, layout),
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
            "max_grad_norm": grad_clip(t.max_grad_norm, t.gradient_accumulation),
            "cfg_scale": t.guidance_scale,
            # `shift` is refused for ai-toolkit by the field map: its own `shift` means something else
            "timestep_type": "linear" if t.timestep_sampling == "uniform" else "sigmoid",
            "cache_text_embeddings": cache_text or arch in QWEN_TE_CACHED,
            "skip_first_sample": True,
            "disable_sampling": not (s.every_n_steps or s.at_end),
        },
        "model": model,
        "sample": {
            "sampler": "flowmatch" if flow else "ddpm",
            "sample_every": s.every_n_steps or total_steps(spec, layout),
            "width": s.width,
            "height": s.height,
            **samples_block(spec, layout, prompts),
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
