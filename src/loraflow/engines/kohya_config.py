"""sd-scripts' inputs rendered from a spec: the dataset TOML, the prompt file and the full argv (FluxGym's
plus the fixes in shared/reference/kohya-fluxgym.md); musubi, the same family, borrows the shared parts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import tomli_w

from loraflow.engines.kohya_files import DATASET, PROMPTS, out_dir
from loraflow.layout import JobLayout
from loraflow.spec import TrainingSpec, TrainSpec

OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "prodigy": "Prodigy", "adafactor": "Adafactor"}
SCHEDULERS = {
    "constant": "constant",
    "linear": "linear",
    "cosine": "cosine",
    "cosine_with_restarts": "cosine_with_restarts",
}


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


def prompts_file(spec: TrainSpec, extra: str = "", guidance: str | None = None) -> str:
    """The kohya family's prompt file: one line per prompt with its size, seed, steps and guidance
    (`extra` adds flags, e.g. musubi's `--f 1` for one-frame samples). sampling.guidance_scale goes where the
    sampler reads it (`guidance`): `--g` is FLUX.1's guidance embedding; SDXL's and Chroma's classifier-free
    guidance is `--l` (sd-scripts at 48d368fa reads `--g` only as a guidance embedding, which they have not)."""
    s = spec.sampling
    guidance = guidance or ("g" if spec.catalog_entry.arch == "flux" else "l")
    lines = []
    for i, prompt in enumerate(s.prompts):
        text = spec.substitute_trigger(prompt).replace("\n", " ")
        lines.append(
            f"{text} --w {s.width} --h {s.height}{extra} --d {s.seed + i} --s {s.steps} --{guidance} {s.guidance_scale}"
        )
    return "\n".join(lines) + ("\n" if lines else "")


def model_paths(spec: TrainSpec, files: dict[str, str]) -> dict[str, str]:
    """Model files by role, under `engine.options.models_dir` (the operator's; `models` by default)."""
    models = Path(str(spec.engine.options.get("models_dir", "models")))
    return {role: str(models / name) for role, name in files.items()}


def _model_files(spec: TrainSpec) -> dict[str, str]:
    return model_paths(spec, spec.catalog_entry.kohya_files)


def sample_and_extra_args(spec: TrainSpec, layout: JobLayout, steps: int | None = None) -> list[str]:
    """Sampling cadence and the passed-through `engine.options.args`, the same for kohya and musubi. `steps`:
    the steps this run counts to, when not training.steps (a resumed musubi run counts from 0 again)."""
    s, t = spec.sampling, spec.training
    steps = t.steps if steps is None else steps
    args: list[str] = []
    if s.prompts and (s.every_n_steps or s.at_end):
        args += ["--sample_prompts", str(PurePosixPath(layout.engine, PROMPTS))]
        if s.every_n_steps or steps:  # at_end alone: a round at the last step
            every = s.every_n_steps or steps
            if s.at_end and steps and every > steps:
                every = steps  # no round on the cadence before the end: the final one is the only one
            args += ["--sample_every_n_steps", str(every)]
        else:
            args += ["--sample_every_n_epochs", str(t.epochs)]
    for key, value in (spec.engine.options.get("args") or {}).items():
        args += [f"--{key}"] if value is True else [f"--{key}", str(value)]
    return args


def train_args(spec: TrainSpec, layout: JobLayout) -> list[str]:
    """The arguments of flux_train_network.py (or sdxl_train_network.py), in FluxGym's order plus the fixes."""
    t, n = spec.training, spec.network
    entry, files = spec.catalog_entry, _model_files(spec)
    flux = entry.arch in ("flux", "chroma")  # Chroma: flux_train_network.py --model_type chroma, no CLIP-L
    args: list[str] = []
    if flux:
        args += ["--pretrained_model_name_or_path", files["transformer"]]
        args += ["--clip_l", files["clip_l"]] if "clip_l" in files else []
        args += ["--t5xxl", files["t5xxl"], "--ae", files["ae"]]
        if entry.kohya_model_type:  # its docs: guidance 0 (the catalog's default) and the T5 attention mask
            args += ["--model_type", entry.kohya_model_type, "--apply_t5_attn_mask"]
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
        "--gradient_accumulation_steps",
        str(t.gradient_accumulation),
        *optimizer_args(t),
    ]
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
    args += [
        *save_args(spec),
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


def save_args(spec: TrainSpec) -> list[str]:
    """Checkpoints with their state folders (for an exact resume) every N steps, the last keep_last of each
    kept: the kohya family keeps the files within `--save_last_n_steps` *and* one more."""
    every = spec.checkpointing.every_n_steps
    keep = every * (spec.checkpointing.keep_last - 1)
    return [
        "--save_every_n_steps",
        str(every),
        "--save_last_n_steps",
        str(keep),
        "--save_state",
        "--save_last_n_steps_state",
        str(keep),
    ]


def optimizer_args(training: TrainingSpec, names: Mapping[str, str] = OPTIMIZERS) -> list[str]:
    """The optimizer, learning-rate schedule and clipping flags, the same for kohya and musubi (`names`: how
    the script spells each optimizer). Adafactor must be told not to schedule its own step size."""
    t = training
    args = [
        "--optimizer_type",
        names[t.optimizer],
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
    return args


def network_args(spec: TrainSpec) -> list[str]:
    """`--network_args` for the spec's targets (field_map refuses what lora_flux cannot express)."""
    out: list[str] = []
    if spec.catalog_entry.arch == "flux" and spec.network.targets == "default":  # attention + MLP, no modulation
        out += ["img_mod_dim=0", "txt_mod_dim=0", "single_mod_dim=0"]
    args = ["--network_args", *out] if out else []
    if spec.network.dropout:
        args += ["--network_dropout", str(spec.network.dropout)]
    return args


def script_name(spec: TrainSpec) -> str:
    return "flux_train_network.py" if spec.catalog_entry.arch in ("flux", "chroma") else "sdxl_train_network.py"


def launcher(spec: TrainSpec, python: str, root: Path) -> list[str]:
    return launch(spec, python, str(root / script_name(spec)))


def launch(spec: TrainSpec, python: str, script: str) -> list[str]:
    """`accelerate launch` with one process per GPU of `compute.gpus` (pinned to 1 on one GPU: on a multi-GPU
    rental it would otherwise start DDP on every GPU it sees); plain python with `engine.options.launcher:
    python` (one GPU only: the field map refuses more). The same for kohya and musubi."""
    if spec.engine.options.get("launcher") == "python":
        return [python, script]
    precision = "no" if spec.training.precision == "fp32" else spec.training.precision
    gpus = spec.compute.gpus
    # --main_process_port 0: a free port, so two jobs on one machine never meet at accelerate's 29500
    several = ["--multi_gpu", "--num_machines", "1", "--main_process_port", "0"] if gpus > 1 else []
    return [
        python,
        "-m",
        "accelerate.commands.launch",
        *several,
        "--mixed_precision",
        precision,
        "--num_cpu_threads_per_process",
        "1",
        "--num_processes",
        str(gpus),
        script,
    ]
