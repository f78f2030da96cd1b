"""What each engine does with every spec field: rendered with the same meaning, translated, or refused.

One spec must train the same way on every engine, so no value may be dropped on the way to an engine.
Each engine-facing field has a rule per engine; a value an engine cannot honour is refused while the
spec is validated (`spec validate`, `render`, `train`, the API's 422), naming the field, the engine and
the fix. Sections loraflow handles itself before any engine runs (dataset preparation, hosts, budget,
publishing...) behave the same on every engine. docs/engines.md's table is generated from this module
(`loraflow engines fields --markdown`), and a test keeps the two equal.

Facts from the pinned engines (ai-toolkit 27a03a91, sd-scripts 48d368fa, musubi-tuner 30c658c4); see
docs/engines.md.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel

if TYPE_CHECKING:
    from loraflow.spec import TrainSpec


ENGINES = ("builtin", "ai-toolkit", "kohya", "musubi")
Kind = Literal["same", "translated", "refused", "loraflow"]
Refusal = tuple[str, str]  # (why the engine cannot honour the value, the fix)
Check = Callable[["TrainSpec"], Refusal | None]
PINS = {"ai-toolkit": "27a03a91", "kohya": "48d368fa", "musubi": "30c658c4"}  # kept equal to the engines' PIN by a test


@dataclass(frozen=True)
class Rule:
    kind: Kind
    how: str  # one sentence: what the engine is given
    refuse: Check | None = None
    refused_when: str = ""  # the refusal, in words, for the docs table


def same(how: str, refuse: Check | None = None, refused_when: str = "") -> Rule:
    return Rule("same", how, refuse, refused_when)


def translated(how: str, refuse: Check | None = None, refused_when: str = "") -> Rule:
    return Rule("translated", how, refuse, refused_when)


def refused(refused_when: str, refuse: Check) -> Rule:
    """A field the engine has no equivalent for: only its neutral value is accepted."""
    return Rule("refused", "", refuse, refused_when)


# --- conditions ---------------------------------------------------------------------------------


def _flux_like(spec: TrainSpec) -> bool:
    return spec.catalog_entry.arch in ("flux", "qwen_image")


def _alpha_forced(spec: TrainSpec) -> Refusal | None:
    n = spec.network
    if _flux_like(spec) and n.alpha != n.rank:
        return (
            f"ai-toolkit saves {spec.catalog_entry.arch} LoRAs in PEFT layout and forces alpha = rank, so alpha "
            f"{n.alpha:g} with rank {n.rank} would train at strength 1.0 instead of {n.alpha / n.rank:g}",
            f"set network.alpha to {n.rank}, or use engine kohya or builtin, which honour alpha",
        )
    return None


def _targets_aitk(spec: TrainSpec) -> Refusal | None:
    if isinstance(spec.network.targets, list):
        return ("ai-toolkit picks layers by preset only", "use targets all, default or attention, or engine builtin")
    if not _flux_like(spec) and spec.network.targets != "default":
        return ("the presets name Flux layers", "use targets default (the engine's own layers)")
    return None


def _targets_kohya(spec: TrainSpec) -> Refusal | None:
    t = spec.network.targets
    if isinstance(t, list):
        return ("kohya's lora_flux picks layers by type only", "use targets all or default, or engine builtin")
    if spec.catalog_entry.arch != "flux":
        return None if t == "default" else ("the presets name Flux layers", "use targets default")
    if t == "attention":
        return (
            "Flux single blocks fuse attention and MLP into linear1/linear2, so kohya cannot train attention alone",
            "use targets default or all, or engine builtin or ai-toolkit",
        )
    return None


def _warmup_aitk(spec: TrainSpec) -> Refusal | None:
    t = spec.training
    if t.lr_warmup_steps and t.lr_scheduler != "constant":
        return (
            f"ai-toolkit has warmup only for the constant schedule, not for {t.lr_scheduler}",
            "set training.lr_warmup_steps: 0, use lr_scheduler: constant, or use engine kohya or builtin",
        )
    return None


def _prodigy_aitk(spec: TrainSpec) -> Refusal | None:
    t = spec.training
    if t.optimizer == "prodigy" and t.learning_rate < 0.1:
        return (
            f"ai-toolkit replaces a Prodigy learning rate below 0.1 with 1.0, so {t.learning_rate:g} would not be used",
            "set training.learning_rate: 1.0 (Prodigy's own estimate; the default with prodigy), or use engine "
            "kohya or builtin",
        )
    return None


def _ddpm(spec: TrainSpec) -> Refusal | None:
    if not _flux_like(spec) and spec.training.timestep_sampling != "sigmoid":
        return (
            f"{spec.catalog_entry.arch} trains with its own DDPM timesteps; the sampling choices are flow-matching's",
            "remove training.timestep_sampling",
        )
    return None


def _shift_aitk(spec: TrainSpec) -> Refusal | None:
    if found := _ddpm(spec):
        return found
    if spec.training.timestep_sampling == "shift":
        return (
            "ai-toolkit's `shift` is a resolution-dependent shift of evenly spaced timesteps, not a fixed "
            "timestep_shift of logit-normal ones",
            "use timestep_sampling sigmoid (or uniform), or engine kohya or builtin for shift",
        )
    return None


def _nf4(engine: str, fix: str) -> Check:
    def check(spec: TrainSpec) -> Refusal | None:
        if spec.training.quantize == "nf4":
            return (f"{engine} has no 4-bit NF4 base", fix)
        return None

    return check


def _low_vram(engine: str, fix: str) -> Check:
    def check(spec: TrainSpec) -> Refusal | None:
        return (f"{engine} has no low_vram mode", fix) if spec.training.low_vram else None

    return check


def _swap(engine: str, fix: str) -> Check:
    def check(spec: TrainSpec) -> Refusal | None:
        return (f"{engine} cannot swap blocks to the CPU", fix) if spec.training.blocks_to_swap else None

    return check


def _compile(engine: str) -> Check:
    def check(spec: TrainSpec) -> Refusal | None:
        if spec.training.compile == "on":
            return (f"{engine} is not compiled by loraflow", "set training.compile: auto, or use engine builtin")
        return None

    return check


def _shuffle_builtin(spec: TrainSpec) -> Refusal | None:
    if spec.dataset.captions.shuffle_tags:
        return (
            "the builtin trainer encodes each caption once and reuses it, so tags cannot be reshuffled each step",
            "set dataset.captions.shuffle_tags: false, or use engine kohya or ai-toolkit",
        )
    return None


def _pin(engine: str) -> Check:
    def check(spec: TrainSpec) -> Refusal | None:
        version, pin = spec.engine.version, PINS[engine]
        if version and not (version.startswith(pin) or (len(version) >= 7 and pin.startswith(version))):
            why = f"loraflow renders for and installs {engine} at its tested pin {pin} only"
            return (why, f"remove engine.version or set it to {pin}")
        return None

    return check


def _no_version(spec: TrainSpec) -> Refusal | None:
    if spec.engine.version:
        return ("the builtin engine is the installed loraflow itself", "remove engine.version")
    return None


# --- the map ------------------------------------------------------------------------------------

LORAFLOW = {
    "name": "Job and output name; each engine gets it as its run name.",
    "base_model": "Resolved through the catalog; see the schnell row below for what differs.",
    "model_family": "Chooses the catalog defaults for a local model folder.",
    "engine.name": "Chooses the engine.",
    "dataset.path": "Prepared by loraflow (checked, captioned, copied); every engine reads the same files.",
    "dataset.nsfw": "A label on the job and model.",
    "dataset.checks": "Run by loraflow before anything starts.",
    "dataset.captions": "Captions are written by loraflow before training (backend, mode, template, trigger "
    "placement, prefix/suffix...); the engines read the finished caption files.",
    "compute": "Where the engine runs; the same for every engine.",
    "monitor": "Stall detection on the engine's progress.",
    "budget": "Cost and time limits kept by loraflow.",
    "publish": "Done by loraflow after training.",
    "notifications": "Sent by loraflow.",
    "wandb": "Logged by loraflow from the engine's progress events.",
    "training.vram_preset": "Applied by loraflow from the catalog, per engine, under the user's values.",
}

FIELDS: dict[str, dict[str, Rule]] = {
    "base_model (flux-schnell)": {
        "builtin": same("Trains the schnell weights as they are."),
        "ai-toolkit": translated(
            "Trains through ostris/FLUX.1-schnell-training-adapter (ai-toolkit's de-distillation adapter, "
            "applied while training and left out of the saved LoRA), as its schnell example does."
        ),
        "kohya": same("Trains the schnell weights as they are (no adapter), like builtin."),
    },
    "engine.version": {
        "builtin": refused("when set", _no_version),
        "ai-toolkit": same("The pin the set-up script installs.", _pin("ai-toolkit"), "unless the pin"),
        "kohya": same("The pin the set-up script installs.", _pin("kohya"), "unless the pin"),
    },
    "engine.options": {
        e: same("Engine-specific keys passed through as written (their meaning is the engine's).")
        for e in ("builtin", "ai-toolkit", "kohya")
    },
    "dataset.trigger_word": {
        "builtin": same("Sample prompts' [trigger]; LoRA metadata."),
        "ai-toolkit": translated(
            "`trigger_word` only with trigger_placement prepend (ai-toolkit prepends it to any caption lacking "
            "it, which is what prepend means); otherwise the finished captions are used as written."
        ),
        "kohya": translated(
            "`class_tokens` (the caption of an image without one) only with trigger_placement prepend."
        ),
    },
    "dataset.caption_extension": {
        e: same("The caption files' extension.") for e in ENGINES
    },
    "dataset.repeats": {
        "builtin": same("Each image this many times an epoch."),
        "ai-toolkit": same("`num_repeats`."),
        "kohya": same("`num_repeats` of the subset."),
    },
    "dataset.captions.dropout_rate": {
        "builtin": same("The whole caption is replaced by the empty caption with this chance."),
        "ai-toolkit": translated(
            "`caption_dropout_rate`; when it is above 0, text embeddings are not cached, because ai-toolkit "
            "keeps the trigger in a dropped caption when they are (Qwen-Image always caches and keeps it)."
        ),
        "kohya": translated(
            "`caption_dropout_rate`; when it is above 0, text-encoder outputs are not cached (kohya refuses "
            "caption dropout with `--cache_text_encoder_outputs`), which costs VRAM for the text encoders."
        ),
    },
    "dataset.captions.shuffle_tags": {
        "builtin": refused("when true", _shuffle_builtin),
        "ai-toolkit": translated(
            "`shuffle_tokens`; text embeddings are then not cached (they would freeze the order)."
        ),
        "kohya": translated("`shuffle_caption`; text-encoder outputs are then not cached (kohya refuses both)."),
    },
    "dataset.captions.keep_tokens": {
        "builtin": same("Only used with shuffle_tags, which builtin refuses."),
        "ai-toolkit": same("`keep_tokens`."),
        "kohya": same("`keep_tokens`."),
    },
    "network.rank": {
        "builtin": same("LoRA rank."),
        "ai-toolkit": same("`network.linear`."),
        "kohya": same("`--network_dim`."),
    },
    "network.alpha": {
        "builtin": same("LoRA alpha; strength alpha/rank."),
        "ai-toolkit": same(
            "`network.linear_alpha` (SDXL).", _alpha_forced, "for Flux and Qwen-Image unless alpha = rank"
        ),
        "kohya": same("`--network_alpha`."),
    },
    "network.targets": {
        "builtin": same("Preset or module-name list."),
        "ai-toolkit": translated(
            "all: ai-toolkit's own set (every Linear in the blocks); default and attention: "
            "`network_kwargs.ignore_if_contains` drops the modulation (and MLP) layers.",
            _targets_aitk,
            "for a module list",
        ),
        "kohya": translated(
            "all: lora_flux's own set; default: `--network_args img_mod_dim=0 txt_mod_dim=0 single_mod_dim=0` "
            "(kohya trains the fused qkv and single-block linear1/linear2 as single LoRAs of the same rank).",
            _targets_kohya,
            "for attention and a module list",
        ),
    },
    "network.dropout": {
        "builtin": same("LoRA dropout."),
        "ai-toolkit": same("`network.dropout`."),
        "kohya": same("`--network_dropout`."),
    },
    "training.steps": {
        "builtin": same("Optimizer steps."),
        "ai-toolkit": same("`train.steps`."),
        "kohya": same("`--max_train_steps`."),
    },
    "training.epochs": {
        "builtin": same("Epochs when steps is null."),
        "ai-toolkit": translated("Converted to `train.steps` from the prepared dataset's image count."),
        "kohya": same("`--max_train_epochs`."),
    },
    "training.batch_size": {
        "builtin": same("Images per micro-batch."),
        "ai-toolkit": same("`train.batch_size`."),
        "kohya": same("`batch_size` of each dataset."),
    },
    "training.gradient_accumulation": {
        "builtin": same("Micro-batches per optimizer step."),
        "ai-toolkit": same("`train.gradient_accumulation`."),
        "kohya": translated(
            "`--gradient_accumulation_steps`. kohya resumes at a multiple of it: resumed at a step that is not "
            "(checkpoints every_n_steps not a multiple of it), up to accumulation - 1 steps are counted done "
            "without being trained."
        ),
    },
    "training.learning_rate": {
        "builtin": same("Learning rate (Prodigy: its multiplier, 1.0 by default)."),
        "ai-toolkit": same("`train.lr`.", _prodigy_aitk, "below 0.1 with Prodigy"),
        "kohya": same("`--learning_rate`."),
    },
    "training.lr_scheduler": {
        "builtin": translated("diffusers' schedule; constant with warmup becomes constant_with_warmup."),
        "ai-toolkit": translated(
            "constant, cosine, cosine_with_restarts (one cycle) as named; linear gets `lr_scheduler_params` "
            "start_factor 1.0, end_factor 0.0 (ai-toolkit's own linear ramps up from lr/3); constant with warmup "
            "becomes constant_with_warmup."
        ),
        "kohya": translated(
            "`--lr_scheduler` (cosine_with_restarts: one cycle); constant with warmup becomes "
            "constant_with_warmup (kohya refuses warmup with constant)."
        ),
    },
    "training.lr_warmup_steps": {
        "builtin": same("Linear warmup from 0."),
        "ai-toolkit": translated(
            "`lr_scheduler_params.num_warmup_steps` of constant_with_warmup.",
            _warmup_aitk,
            "with linear or cosine schedules",
        ),
        "kohya": same("`--lr_warmup_steps`."),
    },
    "training.optimizer": {
        "builtin": same("AdamW, AdamW8bit (AdamW on CPU), Prodigy, Adafactor (relative_step off)."),
        "ai-toolkit": same("`train.optimizer`."),
        "kohya": same("`--optimizer_type` (Adafactor with relative_step, scale_parameter, warmup_init off)."),
    },
    "training.weight_decay": {
        "builtin": same("Optimizer weight decay."),
        "ai-toolkit": same("`optimizer_params.weight_decay`."),
        "kohya": same("`--optimizer_args weight_decay=...`."),
    },
    "training.max_grad_norm": {
        "builtin": same("Gradient clipping (0: off)."),
        "ai-toolkit": same("`train.max_grad_norm`."),
        "kohya": same("`--max_grad_norm`."),
    },
    "training.resolution": {
        "builtin": same("Aspect buckets around each size."),
        "ai-toolkit": same("`resolution` list (buckets per size)."),
        "kohya": same("One bucketed `[[datasets]]` per size."),
    },
    "training.seed": {
        "builtin": same("Seed."),
        "ai-toolkit": same("`training_seed`."),
        "kohya": same("`--seed`."),
    },
    "training.precision": {
        "builtin": same("Autocast dtype (LoRA weights in fp32)."),
        "ai-toolkit": same("`train.dtype`."),
        "kohya": same("`--mixed_precision` (fp32: no)."),
    },
    "training.gradient_checkpointing": {e: same("Gradient checkpointing.") for e in ENGINES},
    "training.cache_latents": {
        "builtin": translated(
            "Always caches the VAE's distribution and draws a fresh latent each step, which is what encoding "
            "each step gives; only disk use differs."
        ),
        "ai-toolkit": same("`cache_latents_to_disk`."),
        "kohya": same("`--cache_latents_to_disk` when true; latents encoded each step when false."),
    },
    "training.cache_text_embeddings": {
        "builtin": translated(
            "Always cached (frozen encoders give the same result); dropout uses a cached empty caption."
        ),
        "ai-toolkit": translated(
            "`cache_text_embeddings`, off when captions are dropped or shuffled (see those rows)."
        ),
        "kohya": translated(
            "`--cache_text_encoder_outputs(_to_disk)`, off when captions are dropped or shuffled (see those rows)."
        ),
    },
    "training.timestep_sampling": {
        "builtin": same("uniform: σ ~ U(0,1); sigmoid and logit_normal: σ = sigmoid(n), n ~ N(0,1); shift: that σ "
                        "shifted by timestep_shift: sσ/(1+(s-1)σ)."),
        "ai-toolkit": translated(
            "uniform: `linear`; sigmoid and logit_normal: `sigmoid` (a sorted grid of the same distribution).",
            _shift_aitk,
            "for shift (and for SDXL unless the default)",
        ),
        "kohya": same(
            "uniform, sigmoid (sigmoid_scale 1), shift; logit_normal is `sigmoid`.",
            _ddpm,
            "for SDXL unless the default",
        ),
    },
    "training.timestep_shift": {
        "builtin": same("s of `shift` sampling."),
        "ai-toolkit": same("Only read with `shift`, which ai-toolkit refuses."),
        "kohya": same("`--discrete_flow_shift` (FluxGym's 3.1582 is the kohya default in the catalog)."),
    },
    "training.guidance_scale": {
        "builtin": same("Guidance-embedding value while training."),
        "ai-toolkit": same("`train.cfg_scale` (the guidance embedding value)."),
        "kohya": same("`--guidance_scale`."),
    },
    "training.quantize": {
        "builtin": same("Base weights fp8, nf4 or qfloat8."),
        "ai-toolkit": translated(
            "fp8 and qfloat8: `quantize` with qtype qfloat8.",
            _nf4("ai-toolkit", "use quantize qfloat8 (or fp8)"),
            "for nf4",
        ),
        "kohya": translated(
            "fp8 and qfloat8: `--fp8_base` (float8 e4m3 weights).",
            _nf4("kohya", "use quantize fp8"),
            "for nf4",
        ),
    },
    "training.compile": {
        "builtin": same(
            "Regional torch.compile of the transformer blocks; auto: on CUDA without gradient checkpointing on an "
            "unquantized base (measured faster there, bench/README.md)."
        ),
        "ai-toolkit": refused("when on", _compile("ai-toolkit")),
        "kohya": refused("when on", _compile("kohya")),
    },
    "training.low_vram": {
        "builtin": refused("when true", _low_vram("builtin", "use training.quantize nf4")),
        "ai-toolkit": same("`model.low_vram`."),
        "kohya": refused("when true", _low_vram("kohya", "use training.blocks_to_swap (e.g. 8)")),
    },
    "training.blocks_to_swap": {
        "builtin": refused("above 0", _swap("builtin", "set training.blocks_to_swap: 0")),
        "ai-toolkit": refused("above 0", _swap("ai-toolkit", "set training.low_vram: true instead")),
        "kohya": same("`--blocks_to_swap`."),
    },
    "sampling.prompts": {
        "builtin": same("Prompts; empty: the dataset's first two captions."),
        "ai-toolkit": translated("`sample.prompts` with [trigger] substituted; empty: no samples."),
        "kohya": translated("One line each in sample_prompts.txt with [trigger] substituted; empty: no samples."),
    },
    "sampling.every_n_steps": {
        "builtin": same("Sample every N steps."),
        "ai-toolkit": same("`sample_every` (0: the last step only)."),
        "kohya": same("`--sample_every_n_steps` (0: the last step only, when at_end)."),
    },
    "sampling.at_end": {
        "builtin": same("A final round after training."),
        "ai-toolkit": translated("ai-toolkit always samples at the end unless sampling is off altogether."),
        "kohya": translated("A round at the last step (`--sample_every_n_steps` = steps when every_n_steps is 0)."),
    },
    "sampling.width": {e: same("Sample width.") for e in ENGINES},
    "sampling.height": {e: same("Sample height.") for e in ENGINES},
    "sampling.seed": {e: same("Prompt i uses seed + i.") for e in ENGINES},
    "sampling.guidance_scale": {e: same("Sampling guidance.") for e in ENGINES},
    "sampling.steps": {e: same("Denoising steps.") for e in ENGINES},
    "checkpointing.every_n_steps": {
        "builtin": same("A checkpoint every N steps."),
        "ai-toolkit": same("`save_every`."),
        "kohya": same("`--save_every_n_steps` (with its state folder, for resume)."),
    },
    "checkpointing.keep_last": {
        "builtin": same("The newest N checkpoints are kept."),
        "ai-toolkit": same("`max_step_saves_to_keep`."),
        "kohya": translated("`--save_last_n_steps` = every_n_steps x (keep_last - 1): kohya keeps one more than "
                            "that span holds."),
    },
    "output.lora_format": {
        e: same("loraflow converts the engine's LoRA to this layout with the exact converter.")
        for e in ("builtin", "ai-toolkit", "kohya")
    },
    "output.dtype": {
        "builtin": same("Saved dtype."),
        "ai-toolkit": same("`save.dtype`."),
        "kohya": same("`--save_precision`."),
    },
}


# --- musubi (Wan video LoRAs) ------------------------------------------------------------------


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
    if spec.training.guidance_scale != 1.0:
        return ("Wan has no guidance embedding to train with", "remove training.guidance_scale (1.0)")
    return None


def _musubi_swap(spec: TrainSpec) -> Refusal | None:
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
    "base_model (flux-schnell)": same("Not a musubi model: the catalog offers musubi for the Wan models only."),
    "engine.version": same("The pin the set-up script installs.", _pin("musubi"), "unless the pin"),
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
        "One image and one video `[[datasets]]` per size, resolution [size, size]: buckets of that area."
    ),
    "training.seed": same("`--seed`."),
    "training.precision": same("`--mixed_precision` (fp32: no)."),
    "training.cache_latents": translated(
        "Always pre-cached by wan_cache_latents.py (musubi trains only from caches and applies no augmentation)."
    ),
    "training.cache_text_embeddings": translated(
        "Always pre-cached by wan_cache_text_encoder_outputs.py (a frozen T5 gives the same result)."
    ),
    "training.timestep_sampling": same("uniform, sigmoid (sigmoid_scale 1), shift; logit_normal is `sigmoid`."),
    "training.timestep_shift": same("`--discrete_flow_shift`."),
    "training.guidance_scale": refused("unless 1.0", _musubi_guidance),
    "training.quantize": translated(
        "fp8 and qfloat8: `--fp8_base --fp8_scaled` (and `--fp8_t5` while caching).",
        _nf4("musubi", "use quantize fp8"),
        "for nf4",
    ),
    "training.compile": refused("when on", _compile("musubi")),
    "training.low_vram": refused("when true", _low_vram("musubi", "use training.blocks_to_swap (e.g. 16)")),
    "training.blocks_to_swap": same("`--blocks_to_swap`.", _musubi_swap, "above the model's blocks - 1"),
    "sampling.prompts": translated(
        "One line each in sample_prompts.txt with `--f 1` (one-frame samples, i.e. images) and [trigger] "
        "substituted; empty: no samples."
    ),
    "sampling.every_n_steps": same("`--sample_every_n_steps` (0: the last step only, when at_end)."),
    "sampling.at_end": translated(
        "A round at the last step (`--sample_every_n_steps` = steps when every_n_steps is 0)."
    ),
    "checkpointing.every_n_steps": same("`--save_every_n_steps` (with its state folder, for resume)."),
    "checkpointing.keep_last": translated(
        "`--save_last_n_steps` = every_n_steps x (keep_last - 1): musubi keeps one more than that span holds."
    ),
    "output.dtype": same("`--save_precision`."),
    "output.lora_format": same(
        "kohya: musubi's own file (`lora_unet_blocks_N_...`, the layout ComfyUI loads).", _musubi_format, "diffusers"
    ),
}
for _field, _rule in MUSUBI.items():
    FIELDS[_field].setdefault("musubi", _rule)



def unwrap_models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models a field annotation can hold (through Optional, list, dict, unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return unwrap_models(typing.get_args(annotation)[0])
    if origin in (Union, types.UnionType, list, dict, tuple):
        out: list[type[BaseModel]] = []
        for arg in typing.get_args(annotation):
            out += unwrap_models(arg)
        return out
    return []


def leaf_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf key of the spec, by dotted path (list items as one path)."""
    out: list[str] = []
    for name, field in model.model_fields.items():
        nested = unwrap_models(field.annotation)
        path = f"{prefix}{name}"
        if nested:
            for sub in nested:
                out += [p for p in leaf_fields(sub, f"{path}.") if p not in out]
        else:
            out.append(path)
    return out


def rule_for(field: str, engine: str) -> Rule:
    """The rule for one leaf field on one engine (a loraflow-handled section when it has no own row)."""
    if field in FIELDS:
        return FIELDS[field][engine]
    for prefix, how in LORAFLOW.items():
        if field == prefix or field.startswith(prefix + "."):
            return Rule("loraflow", how)
    raise KeyError(field)


def refusals(spec: TrainSpec) -> list[str]:
    """One line per value the spec's engine cannot honour: the field, the engine, why, and the fix."""
    engine = spec.engine.name  # one of ENGINES: a hosted engine's keys are checked by spec.refused_fields
    lines = []
    for field, rules in FIELDS.items():
        check = rules[engine].refuse
        found = check(spec) if check else None
        if found:
            why, fix = found
            lines.append(f"{field}: engine {engine} cannot honour this value: {why}. Fix: {fix}.")
    return lines


def markdown() -> str:
    """The docs table: one row per engine-facing field, one column per engine."""
    labels = {"same": "same", "translated": "**translated**", "refused": "**refused**"}
    lines = ["| field | " + " | ".join(ENGINES) + " |", "| --- |" + " --- |" * len(ENGINES)]
    for field, rules in FIELDS.items():
        cells = []
        for engine in ENGINES:
            rule = rules[engine]
            cell = f"{labels[rule.kind]}: {rule.how}" if rule.how else labels[rule.kind]
            if rule.refused_when:
                cell += f" *Refused* {rule.refused_when}." if rule.how else f" {rule.refused_when}."
            cells.append(cell.replace("|", "\\|"))
        lines.append(f"| `{field}` | " + " | ".join(cells) + " |")
    lines += ["", "Handled by loraflow itself, the same on every engine:", ""]
    lines += [f"- `{prefix}`: {how}" for prefix, how in LORAFLOW.items()]
    return "\n".join(lines) + "\n"


def prodigy_default(raw: dict[str, Any], merged: dict[str, Any]) -> dict[str, Any]:
    """With Prodigy and no learning rate of the user's own, the rate is 1.0 (Prodigy's own estimate) on every
    engine, not a catalog default meant for AdamW (which Prodigy would read as a 1e-4 multiplier)."""
    training = merged.get("training")
    user = raw.get("training") if isinstance(raw.get("training"), dict) else {}
    if isinstance(training, dict) and training.get("optimizer") == "prodigy" and "learning_rate" not in user:
        merged["training"] = {**training, "learning_rate": 1.0}
    return merged


START = "<!-- field-map:start (generated: python -m loraflow.field_map docs/engines.md) -->"
END = "<!-- field-map:end -->"


def with_table(doc: str) -> str:
    """The doc with the generated table put between its markers."""
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{markdown()}{END}{tail}"


if __name__ == "__main__":
    import sys
    from pathlib import Path

    if len(sys.argv) > 1:
        target = Path(sys.argv[1])
        target.write_text(with_table(target.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        sys.stdout.write(markdown())
