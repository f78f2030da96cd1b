"""The tiny model's CLIP text encoder loads in every transformers version an engine may bring."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

# CLIPTextModel's keys as transformers 4.x and 5.5.3 (ai-toolkit's) expect them: under `text_model.`
# (5.5.3 given the flat layout reports all 36 as MISSING and the flat ones as UNEXPECTED: checked by hand).
OLDER_LAYOUT = {
    "text_model.embeddings.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight",
    "text_model.final_layer_norm.weight",
    "text_model.final_layer_norm.bias",
} | {
    f"text_model.encoder.layers.{i}.{module}.{kind}"
    for i in range(2)
    for module in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.out_proj",
        "layer_norm1",
        "layer_norm2",
        "mlp.fc1",
        "mlp.fc2",
    )
    for kind in ("weight", "bias")
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from loraflow.trainer.tiny import build_tiny_flux

    return build_tiny_flux(tmp_path_factory.mktemp("models") / "tiny-flux")


def clip_keys(folder: Path) -> set[str]:
    with safe_open(str(folder / "text_encoder" / "model.safetensors"), "pt") as f:
        return set(f.keys())


def test_clip_is_saved_in_the_layout_older_transformers_load(tiny: Path) -> None:
    assert len(OLDER_LAYOUT) == 36
    assert clip_keys(tiny) == OLDER_LAYOUT


def test_current_transformers_loads_every_clip_tensor(tiny: Path) -> None:
    import torch
    from transformers import CLIPTextModel

    model, info = CLIPTextModel.from_pretrained(tiny / "text_encoder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with safe_open(str(tiny / "text_encoder" / "model.safetensors"), "pt") as f:
        names = f.keys()
        stored = {k.removeprefix("text_model."): f.get_tensor(k) for k in names}
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in stored.items())  # the saved weights, not fresh random ones


def test_a_tiny_model_built_before_the_fix_is_mended_in_place(tiny: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    from loraflow.trainer.tiny import build_tiny_flux

    old = tmp_path / "tiny-flux"
    shutil.copytree(tiny, old)
    path = old / "text_encoder" / "model.safetensors"
    save_file({k.removeprefix("text_model."): v for k, v in load_file(path).items()}, path, {"format": "pt"})
    assert not clip_keys(old) & OLDER_LAYOUT
    assert build_tiny_flux(old) == old
    assert clip_keys(old) == OLDER_LAYOUT
