"""musubi's column of the map (Wan video LoRAs): its own rules and the values it refuses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loraflow.field_map.conditions import at_end_on_cadence, compiling, launched_by_accelerate, low_vram, nf4, pin
from loraflow.field_map.rules import Refusal, Rule, refused, same, translated

if TYPE_CHECKING:
    from loraflow.spec import TrainSpec


def _musubi_targets(spec: TrainSpec) -> Refusal | None:
    if isinstance(spec.network.targets, list):
        return ("musubi's lora_wan picks layers by regular expression, not by a module list", "use a preset")
    return None


def _musubi_schedule(spec: TrainSpec) -> Refusal | None:
    if spec.training.lr_scheduler != "constant":
        return (
            "musubi-tuner restarts its step count on resume (the schedule's length would become the steps left), "
            f"so {spec.training.lr_scheduler} would decay twice in a resumed run",
            "use training.lr_scheduler: constant (warmup is kept)",
        )
    return None


def _musubi_epochs(spec: TrainSpec) -> Refusal | None:
    if spec.training.steps is None:
        return ("musubi-tuner restarts its epoch count on resume, so a run by epochs cannot resume exactly",
                "set training.steps (and leave epochs out)")
    return None


def _musubi_dropout(spec: TrainSpec) -> Refusal | None:
    if spec.dataset.captions.dropout_rate > 0:
        return ("musubi trains from pre-cached text-encoder outputs and has no caption dropout",
                "set dataset.captions.dropout_rate: 0")
    return None


def _musubi_shuffle(spec: TrainSpec) -> Refusal | None:
    if spec.dataset.captions.shuffle_tags:
        return ("musubi encodes each caption once before training", "set dataset.captions.shuffle_tags: false")
    return None


def _musubi_guidance(spec: TrainSpec) -> Refusal | None:
    if spec.catalog_entry.musubi_arch in ("flux_kontext", "flux_2"):
        return None  # `--guidance_scale`
    if spec.training.guidance_scale != 1.0:
        return (f"{spec.catalog_entry.name} has no guidance embedding to train with",
                "remove training.guidance_scale (1.0)")
    return None


def _musubi_swap(spec: TrainSpec) -> Refusal | None:
    if spec.catalog_entry.musubi_arch != "wan":
        return None  # musubi checks the other families' limits itself (docs/flux_2.md's table)
    most = 29 if spec.catalog_entry.musubi_task == "t2v-1.3B" else 39
    if spec.training.blocks_to_swap > most:
        return (f"{spec.catalog_entry.name} has {most + 1} blocks and musubi keeps at least one on the GPU",
                f"set training.blocks_to_swap to at most {most}")
    return None


def _musubi_video(spec: TrainSpec) -> Refusal | None:
    from loraflow.errors import UserInputError
    from loraflow.video_options import video_settings  # musubi's own check, so both say the same

    try:
        video_settings(spec)
    except UserInputError as exc:
        return (exc.message.removeprefix("engine.options."), exc.fix or "see docs/engines.md (musubi-tuner)")
    return None


def _musubi_format(spec: TrainSpec) -> Refusal | None:
    if spec.output.lora_format != "kohya":
        return ("loraflow's layout converter knows Flux's modules, not Wan's", "set output.lora_format: kohya")
    return None


MUSUBI: dict[str, Rule] = {
    "base_model (flux-schnell)": same("Not a musubi model: the catalog offers musubi for Wan, FLUX.2, Kontext and "
                                      "Qwen-Image-Edit."),
    "engine.version": same("The pin the set-up script installs.", pin("musubi"), "unless the pin"),
    "engine.options": translated(
        "The video keys (target_frames, frame_extraction, frame_stride, frame_sample, max_frames, source_fps) go "
        "to each video dataset; path, python, launcher, models_dir and args as for kohya.",
        _musubi_video,
        "for target_frames not of the form N*4+1 and unknown frame_extraction",
    ),
    "dataset.trigger_word": translated(
        "musubi reads captions as written: loraflow puts the trigger in the finished caption files (prepend); "
        "sample prompts' [trigger]."
    ),
    "dataset.repeats": same("`num_repeats` of each image and video dataset."),
    "dataset.captions.dropout_rate": refused("above 0", _musubi_dropout),
    "dataset.captions.shuffle_tags": refused("when true", _musubi_shuffle),
    "dataset.captions.keep_tokens": same("Only used with shuffle_tags, which musubi refuses."),
    "network.rank": same("`--network_dim`."),
    "network.alpha": same("`--network_alpha`."),
    "network.targets": translated(
        "default and all: lora_wan's own set (every Linear of the attention blocks: attention and MLP); "
        "attention: `--network_args exclude_patterns=['.*ffn.*']`.",
        _musubi_targets,
        "for a module list",
    ),
    "network.dropout": same("`--network_dropout`."),
    "training.steps": same("`--max_train_steps` (a resumed run is given the steps that remain)."),
    "training.epochs": refused("when training by epochs", _musubi_epochs),
    "training.batch_size": same("`batch_size` in the dataset TOML."),
    "training.gradient_accumulation": same("`--gradient_accumulation_steps`."),
    "training.learning_rate": same("`--learning_rate`."),
    "training.lr_scheduler": translated(
        "`--lr_scheduler constant` (with warmup: constant_with_warmup).", _musubi_schedule, "for linear and cosine"
    ),
    "training.lr_warmup_steps": same("`--lr_warmup_steps`."),
    "training.optimizer": same(
        "`--optimizer_type` (Prodigy: prodigyopt.Prodigy, installed by the set-up; Adafactor with relative_step, "
        "scale_parameter, warmup_init off)."
    ),
    "training.weight_decay": same("`--optimizer_args weight_decay=...`."),
    "training.max_grad_norm": same("`--max_grad_norm`."),
    "training.resolution": translated(
        "One image and one video `[[datasets]]` per size, resolution [size, size]: buckets of that area (a "
        "smaller image or clip is enlarged to it, like builtin; kohya and ai-toolkit keep its own size)."
    ),
    "training.seed": same("`--seed`."),
    "training.precision": same("`--mixed_precision` (fp32: no)."),
    "training.cache_latents": translated(
        "Always pre-cached by <family>_cache_latents.py (musubi trains only from caches, no augmentation)."
    ),
    "training.cache_text_embeddings": translated(
        "Always pre-cached by <family>_cache_text_encoder_outputs.py (a frozen encoder gives the same result)."
    ),
    "training.timestep_sampling": same("uniform, sigmoid (sigmoid_scale 1), shift; logit_normal is `sigmoid`."),
    "training.timestep_shift": same("`--discrete_flow_shift`."),
    "training.guidance_scale": same("`--guidance_scale` (FLUX.2, Kontext).", _musubi_guidance,
                                    "unless 1.0 for Wan and Qwen-Image-Edit"),
    "training.quantize": translated(
        "fp8 and qfloat8: `--fp8_base --fp8_scaled` (and the text encoder's fp8 flag while caching: `--fp8_t5`, "
        "`--fp8_vl`, `--fp8_text_encoder`; none for FLUX.2 [dev]'s Mistral).",
        nf4("musubi", "use quantize fp8"),
        "for nf4",
    ),
    "training.compile": refused("when on", compiling("musubi")),
    "training.low_vram": refused("when true", low_vram("musubi", "use training.blocks_to_swap (e.g. 16)")),
    "training.blocks_to_swap": same("`--blocks_to_swap`.", _musubi_swap, "above the model's blocks - 1"),
    "sampling.prompts": translated(
        "One line each in sample_prompts.txt with `--f 1` (one-frame samples, i.e. images) and [trigger] "
        "substituted; empty: no samples."
    ),
    "sampling.every_n_steps": same("`--sample_every_n_steps` (0: the last step only, when at_end)."),
    "sampling.guidance_scale": same(
        "`--l` in each prompt line for Wan and Qwen-Image-Edit (classifier-free guidance: their samplers never "
        "read `--g`); `--g` for FLUX.2 and Kontext (their guidance embedding)."
    ),
    "sampling.at_end": translated(
        "A round at the last step (`--sample_every_n_steps` = steps when every_n_steps is 0 or above steps).",
        at_end_on_cadence("musubi"),
        "when every_n_steps > 0 does not divide the steps (musubi has no round after the last step)",
    ),
    "checkpointing.every_n_steps": same("`--save_every_n_steps` (with its state folder, for resume)."),
    "checkpointing.keep_last": translated(
        "`--save_last_n_steps` = every_n_steps x (keep_last - 1): musubi keeps one more than that span holds."
    ),
    "output.dtype": same("`--save_precision`."),
    "compute.gpus": translated(
        "`accelerate launch --multi_gpu --num_processes N` for wan_train_network.py (the caching scripts run once, "
        "before it); musubi's own DDP, batch size per GPU.",
        launched_by_accelerate("musubi"),
        "above 1 with engine.options.launcher: python",
    ),
    "output.lora_format": same(
        "kohya: musubi's own file (`lora_unet_blocks_N_...`, the layout ComfyUI loads).", _musubi_format, "diffusers"
    ),
}
