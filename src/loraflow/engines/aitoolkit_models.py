"""ai-toolkit's per-architecture pieces of the job config: the `model` block, control images for edit models,
video frames for Wan, and the samples' control images. Read from ai-toolkit at 27a03a91: the arch names of
extensions_built_in/diffusion_models (flux2, flux2_klein_4b/9b, flux_kontext, qwen_image_edit_plus, chroma,
wan22_14b, wan22_14b_i2v) and toolkit/models/wan21 (wan21_i2v); DatasetConfig's `control_path` (one folder,
or a list: one per control position, the file named as its target); SampleItem's `ctrl_img` and
`ctrl_img_1..3`; Wan 2.2 A14B's `model_kwargs.train_high_noise/train_low_noise`, which trains both experts in
one run switched at its boundary (0.875 t2v, 0.9 i2v) and saves `<name>_high_noise` and `_low_noise` files.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from loraflow.layout import JobLayout
from loraflow.spec import TrainSpec
from loraflow.video_options import video_settings

ARCH = {"flux": "flux", "sdxl": "sdxl", "qwen_image": "qwen_image"}
FLOW = {"flux", "qwen_image", "flux2", "flux2_klein_4b", "flux2_klein_9b", "flux_kontext", "qwen_image_edit_plus",
        "chroma", "wan22_14b", "wan22_14b_i2v", "wan21_i2v"}
CONTROL_DIR = ".control"  # dataset/pairs.py's prepared layout: .control/<position>/<target stem>.<ext>
QWEN_TE_CACHED = {"qwen_image", "qwen_image_edit_plus"}  # ai-toolkit always caches these text embeddings
CONVERTIBLE = {"flux", "flux_kontext"}  # FLUX.1's modules: loraflow's exact kohya/diffusers converter applies


def arch_of(spec: TrainSpec) -> str:
    entry = spec.catalog_entry
    return str(entry.aitk.get("arch") or ARCH.get(entry.arch, entry.arch))


def model_block(spec: TrainSpec, model_path: str) -> dict[str, Any]:
    """`model`: the hub id ai-toolkit loads (its own diffusers repackaging for Wan 2.2), quantization, and the
    catalog's qtype (a 3/4-bit type with its accuracy-recovery adapter) for the big models."""
    t, entry, arch = spec.training, spec.catalog_entry, arch_of(spec)
    if entry.aitk.get("name_or_path") and model_path == entry.hub_id:
        model_path = entry.aitk["name_or_path"]
    quantize = t.quantize != "none"
    model: dict[str, Any] = {
        "name_or_path": model_path,
        "arch": arch,
        "quantize": quantize,
        "quantize_te": quantize,
        "low_vram": t.low_vram,
    }
    if quantize:
        model["qtype"] = entry.aitk.get("qtype", "qfloat8")
        model["qtype_te"] = "qfloat8"
    if arch == "qwen_image":
        model.update(
            {
                "quantize": True,
                "qtype": "uint3|ostris/accuracy_recovery_adapters/qwen_image_torchao_uint3.safetensors",
                "quantize_te": True,
                "qtype_te": "qfloat8",
                "low_vram": True,
            }
        )
    if entry.experts:  # both experts in one run, switched at ai-toolkit's boundary
        model["model_kwargs"] = {"train_high_noise": True, "train_low_noise": True}
    if entry.assistant_lora:
        model["assistant_lora_path"] = entry.assistant_lora
    return model


def dataset_extras(spec: TrainSpec, layout: JobLayout) -> dict[str, Any]:
    """An edit model's `control_path` (the prepared control folders), a Wan model's frames per clip."""
    extras: dict[str, Any] = {}
    entry = spec.catalog_entry
    if spec.dataset.control:
        folders = [str(PurePosixPath(layout.dataset, CONTROL_DIR, str(k))) for k in range(1, control_count(spec,
                                                                                                           layout) + 1)]
        extras["control_path"] = folders[0] if len(folders) == 1 else folders
    if entry.arch == "wan":
        video = video_settings(spec)
        extras["num_frames"] = max(video.get("target_frames") or [1])
        extras["fps"] = 16  # Wan's rate (read only when a clip is not shrunk to num_frames)
    return extras


def control_count(spec: TrainSpec, layout: JobLayout) -> int:
    """How many control positions the prepared dataset has (the model's most before it is prepared)."""
    root = Path(layout.dataset, CONTROL_DIR)
    found = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit()] if root.is_dir() else []
    return len(found) or spec.catalog_entry.controls


def sample_controls(spec: TrainSpec, layout: JobLayout) -> list[list[str]]:
    """Each sample prompt's control images in the prepared dataset (dataset/pairs.py writes them and lists them in
    the manifest); before preparing, one per prompt at the place it will have."""
    manifest = Path(layout.dataset) / "manifest.json"
    rows: list[list[str]] | None = None
    if manifest.is_file():
        rows = json.loads(manifest.read_text(encoding="utf-8")).get("sample_controls")
    if rows is None:
        rows = [[f"{CONTROL_DIR}/samples/{i}_0.png"] for i in range(len(spec.sampling.prompts))]
    return [[str(PurePosixPath(layout.dataset, name)) for name in row] for row in rows]


def samples_block(spec: TrainSpec, layout: JobLayout, prompts: list[str]) -> dict[str, Any]:
    """Prompts, or for a paired dataset `samples` with each prompt's control images (`ctrl_img` for one,
    `ctrl_img_1..3` for several) and Wan's frame count."""
    extras: dict[str, Any] = {}
    if spec.catalog_entry.arch == "wan":
        extras.update({"num_frames": 1, "fps": 16})  # one-frame samples: the bundle's sample pages show images
    if not spec.dataset.control:
        return {"prompts": prompts, **extras}
    items = []
    for prompt, controls in zip(prompts, sample_controls(spec, layout), strict=False):
        item: dict[str, Any] = {"prompt": prompt}
        if len(controls) == 1:
            item["ctrl_img"] = controls[0]
        else:
            item.update({f"ctrl_img_{k}": path for k, path in enumerate(controls, start=1)})
        items.append(item)
    return {"samples": items, **extras}


def keep_native(spec: TrainSpec, final: Path, root: str) -> str:
    """Copy ai-toolkit's final LoRA as it wrote it (its own layout, the one ComfyUI loads), labelled so; for
    Wan 2.2 A14B the high-noise expert's file goes beside the low-noise one."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    pairs = [(final, Path(root) / f"{spec.name}.safetensors")]
    if spec.catalog_entry.experts:
        high = final.with_name(final.name.replace("_low_noise.", "_high_noise."))
        pairs.append((high, Path(root) / f"{spec.name}_high_noise.safetensors"))
    for src, dest in pairs:
        with safe_open(str(src), "pt") as f:
            metadata = {**(f.metadata() or {}), "loraflow.format": f"ai-toolkit:{arch_of(spec)}"}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        tmp = dest.with_name(dest.name + ".partial")
        save_file(state, str(tmp), metadata=metadata)
        tmp.replace(dest)
    return str(pairs[0][1])
