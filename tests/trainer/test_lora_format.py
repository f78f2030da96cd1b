"""LoRA files: exact kohya <-> diffusers conversion, and diffusers applying the trained strength."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from loraflow.trainer.lora_format import (
    FluxDims,
    delta_weight,
    diffusers_modules,
    from_kohya_layout,
    target_regex,
    to_diffusers_layout,
    to_kohya_layout,
)

DIMS = FluxDims(inner=32, mlp=128)


def random_modules(targets: str, rank: int = 4, alpha: float = 8.0, blocks: int = 2) -> dict:
    from loraflow.testing.fake_lora import _shape
    from loraflow.trainer.lora_format import ATTENTION, SINGLE_ATTENTION, SINGLE_MLP

    torch.manual_seed(0)
    double = [*ATTENTION, "ff.net.0.proj", "ff.net.2"]
    single = SINGLE_ATTENTION + (SINGLE_MLP if targets == "default" else [])
    names = [f"transformer_blocks.{i}.{m}" for i in range(blocks) for m in double]
    names += [f"single_transformer_blocks.{i}.{m}" for i in range(blocks) for m in single]
    modules = {}
    for name in names:
        a_shape, b_shape = _shape(name, rank)
        modules[name] = {"A": torch.randn(a_shape), "B": torch.randn(b_shape), "alpha": torch.tensor(alpha)}
    return modules


def fused_delta(modules: dict, block: int, parts: list[str], prefix: str) -> torch.Tensor:
    rows = []
    for part in parts:
        name = f"{prefix}.{block}.{part}"
        rows.append(delta_weight(modules[name]) if name in modules else torch.zeros(DIMS.out_features(part), 32))
    return torch.cat(rows, 0)


@pytest.mark.parametrize("targets", ["default", "attention"])
def test_kohya_export_preserves_every_weight_delta(targets: str) -> None:
    modules = random_modules(targets)
    kohya = to_kohya_layout(modules, DIMS)
    assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in kohya
    assert "lora_unet_single_blocks_1_linear1.alpha" in kohya
    for i in range(2):
        want = fused_delta(modules, i, ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], "single_transformer_blocks")
        got = delta_weight(
            {
                "A": kohya[f"lora_unet_single_blocks_{i}_linear1.lora_down.weight"],
                "B": kohya[f"lora_unet_single_blocks_{i}_linear1.lora_up.weight"],
                "alpha": kohya[f"lora_unet_single_blocks_{i}_linear1.alpha"],
            }
        )
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    back = from_kohya_layout(kohya, DIMS)
    assert set(back) == set(modules)  # zero-filled parts are dropped again
    for name, parts in modules.items():
        torch.testing.assert_close(delta_weight(back[name]), delta_weight(parts), rtol=0, atol=1e-5)


def test_dense_kohya_lora_converts_exactly() -> None:
    """A LoRA trained by kohya itself has a dense fused lora_up; each part still gets its exact delta."""
    torch.manual_seed(1)
    down, up = torch.randn(8, 32), torch.randn(96, 8)
    state = {
        "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": down,
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": up,
        "lora_unet_double_blocks_0_img_attn_qkv.alpha": torch.tensor(4.0),
    }
    modules = from_kohya_layout(state, DIMS)
    full = (4.0 / 8) * up @ down
    for j, part in enumerate(["attn.to_q", "attn.to_k", "attn.to_v"]):
        torch.testing.assert_close(delta_weight(modules[f"transformer_blocks.0.{part}"]), full[j * 32 : (j + 1) * 32])


def test_target_presets_never_hit_top_level_proj_out() -> None:
    import re

    pattern = re.compile(target_regex("default"))
    assert pattern.match("single_transformer_blocks.3.proj_out")
    assert pattern.match("transformer_blocks.0.ff_context.net.2")
    assert not pattern.match("proj_out")
    assert not pattern.match("transformer_blocks.0.norm1.linear")
    assert re.compile(target_regex("all")).match("transformer_blocks.0.norm1.linear")
    assert not re.compile(target_regex("attention")).match("single_transformer_blocks.0.proj_mlp")


def test_lora_loads_in_diffusers_and_changes_output_by_expected_amount(tiny_model: Path, tmp_path: Path) -> None:
    """Load our diffusers-layout file with load_lora_weights; the result must equal merging alpha/r*B@A by hand."""
    from diffusers import FluxPipeline
    from safetensors.torch import save_file

    pipe = FluxPipeline.from_pretrained(tiny_model, local_files_only=True)
    transformer = pipe.transformer
    torch.manual_seed(3)
    modules = {}
    for name, module in transformer.named_modules():
        if name.endswith(("attn.to_q", "attn.to_v", "proj_mlp")):
            modules[name] = {
                "A": torch.randn(4, module.in_features) * 0.1,
                "B": torch.randn(module.out_features, 4) * 0.1,
                "alpha": torch.tensor(2.0),
            }
    save_file(to_diffusers_layout(modules), tmp_path / "lora.safetensors")

    def run(t: torch.nn.Module) -> torch.Tensor:
        torch.manual_seed(0)
        return t(
            hidden_states=torch.randn(1, 16, 64),
            timestep=torch.tensor([0.5]),
            guidance=torch.tensor([3.5]),
            pooled_projections=torch.randn(1, 32),
            encoder_hidden_states=torch.randn(1, 8, 32),
            txt_ids=torch.zeros(8, 3),
            img_ids=torch.zeros(16, 3),
            return_dict=False,
        )[0]

    with torch.no_grad():
        base = run(transformer)
        merged = FluxPipeline.from_pretrained(tiny_model, local_files_only=True).transformer
        named = dict(merged.named_modules())
        for name, parts in modules.items():
            named[name].weight += delta_weight(parts)
        expected = run(merged)
        pipe.load_lora_weights(tmp_path / "lora.safetensors")
        got = run(pipe.transformer)
    assert (got - base).abs().max() > 1e-3  # the LoRA does something
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)  # and exactly what alpha/rank says


def test_trained_kohya_file_round_trips_to_diffusers(make_config, tiny_model: Path) -> None:
    """The trainer's default kohya file converts back and loads in diffusers with the same effect."""
    from safetensors.torch import load_file

    from loraflow.trainer.loop import train

    cfg = make_config(steps=3, checkpoint_every=3)
    assert train(cfg) == 0
    kohya = load_file(Path(cfg.output_dir) / "t.safetensors")
    assert all(k.startswith("lora_unet_") for k in kohya)
    dims = FluxDims(inner=32, mlp=128)
    diffusers_state = to_diffusers_layout(from_kohya_layout(kohya, dims))
    again = to_kohya_layout(diffusers_modules(diffusers_state, 0), dims)
    for key, _value in kohya.items():
        if key.endswith(".alpha"):
            continue
        base = key.rsplit(".lora_", 1)[0]
        want = delta_weight(
            {
                "A": kohya[f"{base}.lora_down.weight"].float(),
                "B": kohya[f"{base}.lora_up.weight"].float(),
                "alpha": kohya[f"{base}.alpha"],
            }
        )
        got = delta_weight(
            {
                "A": again[f"{base}.lora_down.weight"],
                "B": again[f"{base}.lora_up.weight"],
                "alpha": again[f"{base}.alpha"],
            }
        )
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
