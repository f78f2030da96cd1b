"""The map's rows for the models of issue 30 (FLUX.2, Kontext, Qwen-Image-Edit, Chroma, Wan 2.2 A14B and the
image-to-video models) and for paired datasets: what each engine is given, or why it cannot."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loraflow.field_map.rules import Refusal, Rule, refused, same, translated

if TYPE_CHECKING:
    from loraflow.spec import TrainSpec


def _no_pairs(engine: str) -> object:
    def check(spec: TrainSpec) -> Refusal | None:
        if spec.dataset.control or spec.sampling.controls:
            return (f"{engine} trains no edit model in loraflow's catalog", "use engine ai-toolkit or musubi")
        return None

    return check


NOT_OFFERED = "Not offered: the catalog names the engines of each model (docs/spec.md)."

MODELS: dict[str, dict[str, Rule]] = {
    "base_model (flux2-dev, flux2-klein-base-4b/9b)": {
        "builtin": same(NOT_OFFERED),
        "ai-toolkit": translated("`arch` flux2 / flux2_klein_4b / flux2_klein_9b, qfloat8 with low_vram by default."),
        "kohya": same(NOT_OFFERED),
        "musubi": translated(
            "flux_2_*.py with `--model_version dev / klein-base-4b / klein-base-9b`, networks.lora_flux_2; "
            "timestep_sampling shift is `--discrete_flow_shift` (musubi's flux2_shift is resolution-dependent)."
        ),
    },
    "base_model (flux-kontext-dev)": {
        "builtin": same(NOT_OFFERED),
        "ai-toolkit": translated("`arch` flux_kontext; pairs as `control_path`; LoRA converted like FLUX.1's."),
        "kohya": same(NOT_OFFERED + " (sd-scripts has no Kontext trainer at its pin)"),
        "musubi": translated("flux_kontext_*.py with T5 (`--text_encoder1`) and CLIP-L (`--text_encoder2`)."),
    },
    "base_model (qwen-image-edit-2509/2511)": {
        "builtin": same(NOT_OFFERED),
        "ai-toolkit": translated(
            "`arch` qwen_image_edit_plus (2511 through the same class, as ai-toolkit's UI does) with the 3-bit "
            "accuracy-recovery qtype; up to 3 controls as a `control_path` list."
        ),
        "kohya": same(NOT_OFFERED),
        "musubi": translated("qwen_image_*.py with `--model_version edit-2509 / edit-2511`, networks.lora_qwen_image."),
    },
    "base_model (chroma)": {
        "builtin": same(NOT_OFFERED),
        "ai-toolkit": same("`arch` chroma (lodestones/Chroma1-Base)."),
        "kohya": translated(
            "flux_train_network.py `--model_type chroma --apply_t5_attn_mask`, no `--clip_l`, guidance 0 "
            "(its docs require both)."
        ),
        "musubi": same(NOT_OFFERED),
    },
    "base_model (wan2.2-t2v-a14b, wan2.2-i2v-a14b)": {
        "builtin": same(NOT_OFFERED),
        "ai-toolkit": translated(
            "`arch` wan22_14b / wan22_14b_i2v with `model_kwargs` train_high_noise and train_low_noise: both "
            "experts in one run, switched at ai-toolkit's boundary (875 t2v, 900 i2v); two files, "
            "`<name>.safetensors` (low noise) and `<name>_high_noise.safetensors`."
        ),
        "kohya": same(NOT_OFFERED),
        "musubi": translated(
            "two musubi runs in one job, each expert's `--dit` alone over its timesteps (`--min_timestep` / "
            "`--max_timestep` at musubi's boundary, 875 t2v, 900 i2v, `--preserve_distribution_shape`): the "
            "high-noise expert for the first half of `training.steps`, then the low-noise one; two files, "
            "`<name>.safetensors` (low noise) and `<name>_high_noise.safetensors`. On a leased host too: its "
            "run folders are mirrored here, and each run is chosen from the copy."
        ),
    },
    "base_model (wan2.1-i2v-14b, wan2.2-i2v-a14b)": {
        "builtin": same(NOT_OFFERED),
        "ai-toolkit": translated(
            "`arch` wan21_i2v / wan22_14b_i2v: each clip's first frame conditions it; no samples (ai-toolkit's "
            "image-to-video samples need a start image per prompt)."
        ),
        "kohya": same(NOT_OFFERED),
        "musubi": translated("`--task i2v-14B` (with `--clip`) / `i2v-A14B`; latents cached with `--i2v`."),
    },
    "dataset.control": {
        "builtin": refused("when set", _no_pairs("builtin")),  # type: ignore[arg-type]
        "ai-toolkit": translated(
            "`control_path`: the prepared `.control/1` folder, or one folder per control position (a list)."
        ),
        "kohya": refused("when set", _no_pairs("kohya")),  # type: ignore[arg-type]
        "musubi": translated(
            "`control_directory` of each image dataset: `.control/1`, or `.control/all` with musubi's numbered "
            "names (`<stem>_0`, `<stem>_1`...) for several."
        ),
    },
    "sampling.controls": {
        "builtin": refused("when set", _no_pairs("builtin")),  # type: ignore[arg-type]
        "ai-toolkit": translated("`samples` items with `ctrl_img` (one) or `ctrl_img_1..3` (several)."),
        "kohya": refused("when set", _no_pairs("kohya")),  # type: ignore[arg-type]
        "musubi": translated("`--ci <image>` per control on each prompt line."),
    },
}
