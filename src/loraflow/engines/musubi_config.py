"""musubi-tuner's inputs rendered from a spec: the dataset TOML, the prompt file, the caching steps and the
training argv (musubi's docs/wan.md order plus loraflow's fixes)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import tomli_w

from loraflow.engines import kohya_config
from loraflow.engines.aitoolkit_models import CONTROL_DIR, control_count, sample_controls
from loraflow.engines.musubi_arch import family, fp8_text_flag, latent_extra
from loraflow.engines.musubi_experts import Expert, timestep_args
from loraflow.engines.musubi_files import DATASET, SCRIPTS, segment_dir
from loraflow.layout import JobLayout
from loraflow.media.video import VIDEO_EXTENSIONS
from loraflow.spec import TrainSpec
from loraflow.video_options import video_settings

OPTIMIZERS = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "prodigy": "prodigyopt.Prodigy", "adafactor": "Adafactor"}


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
    if family(spec).prefix != "wan":
        kinds = {"images"}  # the image models' caching scripts take image datasets only
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
                {"image_directory": layout.dataset, "cache_directory": str(cache / f"images-{res}"), **common,
                 **control_directory(spec, layout)}
            )
        if "videos" in kinds:
            datasets.append(
                {"video_directory": layout.dataset, "cache_directory": str(cache / f"videos-{res}"), **common, **video}
            )
    return tomli_w.dumps({"general": general, "datasets": datasets})


def control_directory(spec: TrainSpec, layout: JobLayout) -> dict[str, str]:
    """An edit model's control images (dataset/pairs.py's prepared layout): the one position's folder, or for
    several the folder of musubi's numbered names (`<stem>_0`, `<stem>_1`...)."""
    if not spec.dataset.control:
        return {}
    one = control_count(spec, layout) == 1
    return {"control_directory": str(PurePosixPath(layout.dataset, CONTROL_DIR, "1" if one else "all"))}


def prompts_file(spec: TrainSpec, layout: JobLayout | None = None) -> str:
    """kohya's prompt file; `--f 1` gives one-frame samples (images), which the bundle's sample pages show;
    an edit model's prompts name their control images with `--ci` (musubi reads several). The sampling
    guidance goes where musubi's sampler reads it (see guidance_flag)."""
    flag = guidance_flag(spec)
    if not (spec.dataset.control and layout):
        return kohya_config.prompts_file(spec, " --f 1", flag)
    lines = kohya_config.prompts_file(spec, " --f 1", flag).splitlines()
    controls = sample_controls(spec, layout)
    return "".join(line + "".join(f" --ci {c}" for c in row) + "\n" for line, row in zip(lines, controls, strict=False))


def guidance_flag(spec: TrainSpec) -> str:
    """musubi's `line_to_prompt_dict` (30c658c4) reads `--g` as `guidance_scale` and `--l` as `cfg_scale`.
    The FLUX samplers feed `guidance_scale` to their guidance embedding; Wan's and Qwen-Image's never read it
    ("not used") and guide with `cfg_scale`, so theirs is `--l`."""
    return "g" if spec.catalog_entry.arch.startswith("flux") else "l"


def model_files(spec: TrainSpec) -> dict[str, str]:
    return kohya_config.model_paths(spec, spec.catalog_entry.musubi_files)


def train_args(spec: TrainSpec, layout: JobLayout, offset: int = 0, expert: Expert | None = None) -> list[str]:
    """wan_train_network.py's arguments, in the order of musubi's docs/wan.md example plus loraflow's fixes.
    `expert`: one Wan 2.2 A14B expert's run (musubi_experts), its DiT alone over its timesteps."""
    t, n = spec.training, spec.network
    entry, files, fam = spec.catalog_entry, model_files(spec), family(spec)
    args = ["--task", str(entry.musubi_task)] if entry.musubi_task else []
    if expert is not None:
        files = {role: path for role, path in files.items() if role not in ("dit", "dit_high_noise")}
        args += ["--dit", model_files(spec)[expert.role]]
    for role in fam.train_files:
        if role in files:
            args += [f"--{role}", files[role]]
    args += entry.musubi_args
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
    args += kohya_config.optimizer_args(t, OPTIMIZERS)
    if t.gradient_checkpointing:
        args.append("--gradient_checkpointing")
    args += [
        "--gradient_accumulation_steps",
        str(t.gradient_accumulation),
        "--max_data_loader_n_workers",
        "2",
        "--persistent_data_loader_workers",
        "--network_module",
        fam.network,
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
    if expert is not None:
        args += timestep_args(expert)
    if fam.guidance:
        args += ["--guidance_scale", str(t.guidance_scale)]
    args += ["--seed", str(t.seed)]
    last = expert.last if expert is not None else t.steps  # the cumulative step this run ends at
    if last:
        args += ["--max_train_steps", str(last - offset)]
    else:
        args += ["--max_train_epochs", str(t.epochs)]
    args += [
        *kohya_config.save_args(spec),
        "--save_precision",
        {"fp32": "float", "fp16": "fp16", "bf16": "bf16"}[spec.output.dtype],
        "--output_dir",
        segment_dir(layout, offset),
        "--output_name",
        expert.output_name if expert is not None else spec.name,
    ]
    # musubi counts a resumed run's steps from 0 again: its final sample round is at the steps left
    return args + kohya_config.sample_and_extra_args(spec, layout, last - offset if last else None)


def cache_steps(spec: TrainSpec, layout: JobLayout, python: str, root: Path) -> list[list[str]]:
    """The two caching scripts musubi needs before training; `--skip_existing` keeps a resume from redoing them."""
    files, config, fam = model_files(spec), str(PurePosixPath(layout.engine, DATASET)), family(spec)
    latents = [python, str(root / SCRIPTS / f"{fam.prefix}_cache_latents.py"), "--dataset_config", config]
    latents += [arg for role in fam.latent_files if role in files for arg in (f"--{role}", files[role])]
    latents += latent_extra(spec) + spec.catalog_entry.musubi_args
    text = [python, str(root / SCRIPTS / f"{fam.prefix}_cache_text_encoder_outputs.py"), "--dataset_config", config]
    text += [arg for role in fam.text_files if role in files for arg in (f"--{role}", files[role])]
    text += ["--batch_size", str(fam.text_batch), *spec.catalog_entry.musubi_args]
    if spec.training.quantize != "none" and fp8_text_flag(spec):
        text.append(str(fp8_text_flag(spec)))
    return [[*latents, "--skip_existing"], [*text, "--skip_existing"]]


def launcher(spec: TrainSpec, python: str, root: Path) -> list[str]:
    return kohya_config.launch(spec, python, str(root / SCRIPTS / family(spec).train_script))


def shell(steps: list[list[str]], train: list[str], first: str | None = None) -> str:
    """Caching then training in one shell; `exec` makes the trainer the launched process itself, so stopping
    or killing the job's process stops training, not only a wrapper. `first`: a line to print before."""
    head = [shlex.join(["echo", first])] if first else []
    return " && ".join([*head, *(shlex.join(s) for s in steps), "exec " + shlex.join(train)])
