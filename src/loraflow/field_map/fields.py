"""The field map: for each engine-facing spec field, its rule on every engine; and the sections loraflow
handles itself, the same on every engine."""

from __future__ import annotations

from loraflow.field_map.conditions import (
    adafactor_clip_aitk,
    alpha_forced,
    at_end_on_cadence,
    compiling,
    ddpm,
    keep_tokens_aitk,
    launched_by_accelerate,
    low_vram,
    nf4,
    no_version,
    one_gpu_aitk,
    pin,
    prodigy_aitk,
    shift_aitk,
    shuffle_builtin,
    swap,
    targets_aitk,
    targets_kohya,
    warmup_aitk,
)
from loraflow.field_map.models import MODELS
from loraflow.field_map.musubi import MUSUBI
from loraflow.field_map.rules import ENGINES, Rule, refused, same, translated

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
    "evaluation": "The result check after training, run by loraflow on the engine's LoRA files (held-out images "
    "are taken out of the dataset before the engine sees it).",
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
        "builtin": refused("when set", no_version),
        "ai-toolkit": same("The pin the set-up script installs.", pin("ai-toolkit"), "unless the pin"),
        "kohya": same("The pin the set-up script installs.", pin("kohya"), "unless the pin"),
    },
    "engine.options": {
        e: same("Engine-specific keys passed through as written (their meaning is the engine's).")
        for e in ("builtin", "ai-toolkit", "kohya")
    },
    "dataset.trigger_word": {
        "builtin": same("Sample prompts' [trigger]; LoRA metadata."),
        "ai-toolkit": translated(
            "`trigger_word` only with trigger_placement prepend (ai-toolkit prepends it to any caption lacking "
            "it, which is what prepend means) and no caption dropout (ai-toolkit would put it back into a dropped "
            "caption); otherwise the finished captions, which carry it, are used as written."
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
            "`caption_dropout_rate`, without `trigger_word` (ai-toolkit adds it back to a dropped caption, cached "
            "or not, which would train the trigger alone); text embeddings stay cached (it caches the empty one)."
        ),
        "kohya": translated(
            "`caption_dropout_rate`; when it is above 0, text-encoder outputs are not cached (kohya refuses "
            "caption dropout with `--cache_text_encoder_outputs`), which costs VRAM for the text encoders."
        ),
    },
    "dataset.captions.shuffle_tags": {
        "builtin": refused("when true", shuffle_builtin),
        "ai-toolkit": translated(
            "`shuffle_tokens` (every tag, the trigger too: see keep_tokens); text embeddings are then not cached "
            "(they would freeze the order)."
        ),
        "kohya": translated("`shuffle_caption`; text-encoder outputs are then not cached (kohya refuses both)."),
    },
    "dataset.captions.keep_tokens": {
        "builtin": same("Only used with shuffle_tags, which builtin refuses."),
        "ai-toolkit": same(
            "Only used with shuffle_tags.",
            keep_tokens_aitk,
            "above 0 with shuffle_tags (ai-toolkit shuffles every tag)",
        ),
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
            "`network.linear_alpha` (SDXL).", alpha_forced, "for Flux and Qwen-Image unless alpha = rank"
        ),
        "kohya": same("`--network_alpha`."),
    },
    "network.targets": {
        "builtin": same("Preset or module-name list."),
        "ai-toolkit": translated(
            "all: ai-toolkit's own set (every Linear in the blocks); default and attention: "
            "`network_kwargs.ignore_if_contains` drops the modulation (and MLP) layers.",
            targets_aitk,
            "for a module list",
        ),
        "kohya": translated(
            "all: lora_flux's own set; default: `--network_args img_mod_dim=0 txt_mod_dim=0 single_mod_dim=0` "
            "(kohya trains the fused qkv and single-block linear1/linear2 as single LoRAs of the same rank).",
            targets_kohya,
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
        "ai-toolkit": same("`train.lr`.", prodigy_aitk, "below 0.1 with Prodigy"),
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
            warmup_aitk,
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
        "ai-toolkit": translated(
            "`train.max_grad_norm` x gradient_accumulation (ai-toolkit clips the sum of the micro-batches' "
            "gradients, the others their mean); 0 is `.inf` (ai-toolkit clips with no `> 0` guard: 0 would zero "
            "every gradient).",
            adafactor_clip_aitk,
            "above 0 with adafactor (ai-toolkit never clips Adafactor)",
        ),
        "kohya": same("`--max_grad_norm`."),
    },
    "training.resolution": {
        "builtin": same("Aspect buckets around each size (a smaller image is enlarged to it)."),
        "ai-toolkit": same(
            "`resolution` list (buckets per size); an image smaller than a size keeps its own pixel count "
            "(ai-toolkit's buckets never enlarge one)."
        ),
        "kohya": same(
            "One bucketed `[[datasets]]` per size with `bucket_no_upscale = true`: an image smaller than the size "
            "keeps its own, as on ai-toolkit."
        ),
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
        "ai-toolkit": translated("`cache_text_embeddings`, off when captions are shuffled (see that row)."),
        "kohya": translated(
            "`--cache_text_encoder_outputs(_to_disk)`, off when captions are dropped or shuffled (see those rows)."
        ),
    },
    "training.timestep_sampling": {
        "builtin": same("uniform: σ ~ U(0,1); sigmoid and logit_normal: σ = sigmoid(n), n ~ N(0,1); shift: that σ "
                        "shifted by timestep_shift: sσ/(1+(s-1)σ)."),
        "ai-toolkit": translated(
            "uniform: `linear`; sigmoid and logit_normal: `sigmoid` (a sorted grid of the same distribution).",
            shift_aitk,
            "for shift (and for SDXL unless the default)",
        ),
        "kohya": same(
            "uniform, sigmoid (sigmoid_scale 1), shift; logit_normal is `sigmoid`.",
            ddpm,
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
            nf4("ai-toolkit", "use quantize qfloat8 (or fp8)"),
            "for nf4",
        ),
        "kohya": translated(
            "fp8 and qfloat8: `--fp8_base` (float8 e4m3 weights).",
            nf4("kohya", "use quantize fp8"),
            "for nf4",
        ),
    },
    "training.compile": {
        "builtin": same(
            "Regional torch.compile of the transformer blocks; auto: on CUDA without gradient checkpointing on an "
            "unquantized base (measured faster there, bench/README.md)."
        ),
        "ai-toolkit": refused("when on", compiling("ai-toolkit")),
        "kohya": refused("when on", compiling("kohya")),
    },
    "training.low_vram": {
        "builtin": refused("when true", low_vram("builtin", "use training.quantize nf4")),
        "ai-toolkit": same("`model.low_vram`."),
        "kohya": refused("when true", low_vram("kohya", "use training.blocks_to_swap (e.g. 8)")),
    },
    "training.blocks_to_swap": {
        "builtin": refused("above 0", swap("builtin", "set training.blocks_to_swap: 0")),
        "ai-toolkit": refused("above 0", swap("ai-toolkit", "set training.low_vram: true instead")),
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
        "kohya": translated(
            "A round at the last step (`--sample_every_n_steps` = steps when every_n_steps is 0 or above steps).",
            at_end_on_cadence("kohya"),
            "when every_n_steps > 0 does not divide the steps (kohya has no round after the last step)",
        ),
    },
    "sampling.width": {e: same("Sample width.") for e in ENGINES},
    "sampling.height": {e: same("Sample height.") for e in ENGINES},
    "sampling.seed": {e: same("Prompt i uses seed + i.") for e in ENGINES},
    "sampling.guidance_scale": {
        "builtin": same("Sampling guidance."),
        "ai-toolkit": same("`sample.guidance_scale`."),
        "kohya": same("`--g` in each prompt line for FLUX.1 (its guidance embedding); `--l` (classifier-free "
                      "guidance) for SDXL and Chroma, whose samplers do not read `--g`."),
    },
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
    "compute.gpus": {
        "builtin": same(
            "One trainer process per GPU under `accelerate launch` (DDP); each trains batch_size x "
            "gradient_accumulation of every step's global batch; rank 0 caches, saves, samples and reports."
        ),
        "ai-toolkit": refused("above 1", one_gpu_aitk),
        "kohya": translated(
            "`accelerate launch --multi_gpu --num_processes N`: sd-scripts' own DDP (train_batch_size is per GPU).",
            launched_by_accelerate("kohya"),
            "above 1 with engine.options.launcher: python",
        ),
    },
    "output.dtype": {
        "builtin": same("Saved dtype."),
        "ai-toolkit": same("`save.dtype`."),
        "kohya": same("`--save_precision`."),
    },
}
for _field, _rule in MUSUBI.items():
    FIELDS[_field].setdefault("musubi", _rule)
FIELDS.update(MODELS)
