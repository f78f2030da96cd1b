"""The structural check of a LoRA file (loraflow/lora_check): what it accepts from every engine's layout,
what it refuses and with which code and hint, and that diffusers' own converter agrees with its Flux keys."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from loraflow.lora_check import ABS_FLOOR, Expectation, check_file, load_base
from loraflow.lora_check.reading import open_tensors
from loraflow.testing.fake_lora import DIMS, diffusers_lora, kohya_lora
from loraflow.trainer.lora_format import FluxDims, diffusers_modules, to_kohya_layout

FLUX1 = {"double": 19, "single": 38}


def flux(**over: object) -> Expectation:
    fields: dict = {"arch": "flux", "rank": 16, "alpha": 16.0, "targets": "default", "geometry": FLUX1}
    return Expectation(**{**fields, **over})


def write(tmp_path: Path, state: dict[str, torch.Tensor], name: str = "lora.safetensors", **meta: str) -> Path:
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta or None)
    return path


def test_every_stand_in_layout_of_a_trained_flux_lora_passes(tmp_path: Path) -> None:
    for name, state, exp in (
        ("aitk.safetensors", diffusers_lora(16, 1), flux()),
        ("kohya.safetensors", kohya_lora(16, 8.0, 1), flux(alpha=8.0)),
    ):
        verdict = check_file(write(tmp_path, state, name), exp)
        assert verdict.ok, (name, verdict)
        assert "kohya" not in name or "not consulted: it knows FLUX.1's width only" in verdict.note
        assert verdict.live_modules == verdict.modules > 0
        assert verdict.judged_against.startswith("an absolute floor")


def test_an_all_zero_b_is_inert_with_a_hint_naming_the_causes(tmp_path: Path) -> None:
    inert = write(tmp_path, kohya_lora(16, 16.0, 1, inert=True))
    verdict = check_file(inert, flux(max_grad_norm=0.0, engine="ai-toolkit"))
    assert verdict.code == "lora_inert" and verdict.live_modules == 0 and verdict.largest_update == 0.0
    assert "changes nothing" in verdict.message
    assert "gradient clipping at 0" in verdict.hint and "frozen or absent targets" in verdict.hint
    tiny_lr = check_file(write(tmp_path, diffusers_lora(16, 1, inert=True)), flux(learning_rate=1e-30))
    assert "zero learning rate" in tiny_lr.hint


def test_nan_keys_rank_alpha_and_blocks_are_invalid(tmp_path: Path) -> None:
    good = diffusers_lora(16, 1, torch.float32)
    nan = {k: torch.full_like(v, float("nan")) for k, v in good.items()}
    verdict = check_file(write(tmp_path, nan, "nan.safetensors"), flux())
    assert verdict.code == "lora_invalid" and "all-NaN" in verdict.hint

    unknown = {**good, "transformer.transformer_blocks.0.attn.to_qq.lora_A.weight": torch.ones(16, 32)}
    verdict = check_file(write(tmp_path, unknown, "unknown.safetensors"), flux())
    assert verdict.code == "lora_invalid" and "attn.to_qq" in verdict.message

    verdict = check_file(write(tmp_path, good, "rank.safetensors"), flux(rank=8, alpha=8.0))
    assert verdict.code == "lora_invalid" and any("rank 16, the spec's rank is 8" in f for f in verdict.findings)

    verdict = check_file(write(tmp_path, good, "alpha.safetensors"), flux(alpha=32.0))  # no alpha key: alpha = rank
    assert verdict.code == "lora_invalid" and "strength 1" in verdict.message and "alpha 32" in verdict.message

    no_block = {k: v for k, v in good.items() if ".single_transformer_blocks.37." not in k}
    verdict = check_file(write(tmp_path, no_block, "block.safetensors"), flux())
    assert verdict.code == "lora_invalid" and "block 37" in verdict.message and "absent targets" in verdict.hint

    too_deep = check_file(write(tmp_path, good, "deep.safetensors"), flux(geometry={"double": 2, "single": 38}))
    assert too_deep.code == "lora_invalid" and "beyond the model's 2 double blocks" in too_deep.message

    attention_only = {k: v for k, v in good.items() if ".ff" not in k}  # MLP gone, preset `default` wants it
    verdict = check_file(write(tmp_path, attention_only, "mlp.safetensors"), flux())
    assert verdict.code == "lora_invalid" and "ff.net.0.proj" in verdict.message
    assert check_file(write(tmp_path, attention_only, "mlp.safetensors"), flux(targets="attention")).ok

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((tmp_path / "rank.safetensors").read_bytes()[:5000])
    assert check_file(cut, flux()).code == "lora_invalid"


def test_the_update_is_judged_against_the_base_layers_when_they_are_here(tmp_path: Path) -> None:
    """An update far below its layers is inert against the base even where the absolute floor would pass it."""
    gen = torch.Generator().manual_seed(0)
    base = {}
    for key in diffusers_lora(16, 1):
        if key.endswith("lora_A.weight"):
            module = key.removeprefix("transformer.").removesuffix(".lora_A.weight")
            inp = diffusers_lora(16, 1)[key].shape[1]
            out = diffusers_lora(16, 1)[key.replace("lora_A", "lora_B")].shape[0]
            base[f"{module}.weight"] = torch.randn(out, inp, generator=gen) * 100
    folder = tmp_path / "base" / "transformer"
    folder.mkdir(parents=True)
    save_file(base, str(folder / "diffusion_pytorch_model.safetensors"))
    weights = load_base([tmp_path / "nothing-here", tmp_path / "base"])
    assert weights is not None and weights.where == str(tmp_path / "base")

    small = {k: (v * 1e-5 if "lora_B" in k else v) for k, v in diffusers_lora(16, 1, torch.float32).items()}
    path = write(tmp_path, small)
    alone = check_file(path, flux())
    assert alone.ok and alone.largest_update > ABS_FLOOR
    judged = check_file(path, flux(), weights)
    assert judged.code == "lora_inert" and judged.judged_against.startswith("base weights")
    assert judged.largest_update < 1e-6
    trained = check_file(write(tmp_path, diffusers_lora(16, 1, torch.float32), "t.safetensors"), flux(), weights)
    assert trained.ok and trained.largest_update > 1e-4


def test_the_update_norm_is_the_product_norm_and_bf16_is_read_exactly(tmp_path: Path) -> None:
    state = kohya_lora(16, 8.0, 3)  # bf16 matrices, fp32 alphas
    path = write(tmp_path, state)
    with open_tensors(path) as f:
        for key in list(state)[:6]:
            assert np.array_equal(f.get(key), state[key].float().numpy())
    from loraflow.lora_check.check import _update_norm

    down, up = state["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"], state[
        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    expected = float(torch.linalg.norm(up.double() @ down.double()))
    assert math.isclose(_update_norm(down.float().numpy(), up.float().numpy()), expected, rel_tol=1e-9)


def _wan(blocks: int, modules: list[str]) -> dict[str, torch.Tensor]:
    out = {}
    for i in range(blocks):
        for m in modules:
            out[f"lora_unet_blocks_{i}_{m}.lora_down.weight"] = torch.randn(8, 16)
            out[f"lora_unet_blocks_{i}_{m}.lora_up.weight"] = torch.randn(16, 8) * 0.01
            out[f"lora_unet_blocks_{i}_{m}.alpha"] = torch.tensor(8.0)
    return out


def test_wan_qwen_and_sdxl_keys(tmp_path: Path) -> None:
    wan = [f"self_attn_{x}" for x in "qkvo"] + [f"cross_attn_{x}" for x in "qkvo"]
    exp = Expectation(arch="wan", rank=8, alpha=8.0, targets="attention", geometry={"blocks": 30})
    assert check_file(write(tmp_path, _wan(30, wan), "wan.safetensors"), exp).ok
    short = check_file(write(tmp_path, _wan(29, wan), "wan29.safetensors"), exp)
    assert short.code == "lora_invalid" and "block 29" in short.message
    wide = Expectation(arch="wan", rank=8, alpha=8.0, targets="default", geometry={"blocks": 30})
    assert "ffn.0" in check_file(write(tmp_path, _wan(30, wan), "wan.safetensors"), wide).message
    assert check_file(write(tmp_path, _wan(30, [*wan, "ffn_0", "ffn_2"]), "wanf.safetensors"), wide).ok

    from loraflow.lora_check.keys import QWEN_ATTENTION, SDXL_ATTENTION, SDXL_BLOCKS

    qwen = {}
    for i in range(60):
        for m in QWEN_ATTENTION:
            qwen[f"transformer.transformer_blocks.{i}.{m}.lora_A.weight"] = torch.randn(4, 24)
            qwen[f"transformer.transformer_blocks.{i}.{m}.lora_B.weight"] = torch.randn(24, 4) * 0.01
    exp = Expectation(arch="qwen_image", rank=4, alpha=4.0, targets="attention", geometry={"blocks": 60})
    assert check_file(write(tmp_path, qwen, "qwen.safetensors"), exp).ok

    sdxl = {}
    for block in SDXL_BLOCKS:
        for m in SDXL_ATTENTION:
            stem = "lora_unet_" + f"{block}.{m}".replace(".", "_")
            sdxl[f"{stem}.lora_down.weight"] = torch.randn(4, 20)
            sdxl[f"{stem}.lora_up.weight"] = torch.randn(20, 4) * 0.01
            sdxl[f"{stem}.alpha"] = torch.tensor(2.0)
    sdxl["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight"] = torch.randn(4, 20)
    sdxl["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight"] = torch.randn(20, 4)
    sdxl["lora_te1_text_model_encoder_layers_0_self_attn_q_proj.alpha"] = torch.tensor(2.0)
    exp = Expectation(arch="sdxl", rank=4, alpha=2.0, targets="default")
    assert check_file(write(tmp_path, sdxl, "sdxl.safetensors"), exp).ok
    assert len(SDXL_BLOCKS) == 70
    bad_key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"  # no attention
    bad = {**sdxl, bad_key: torch.ones(4, 20)}
    assert check_file(write(tmp_path, bad, "sdxl-bad.safetensors"), exp).code == "lora_invalid"


def _flux1_width_lora(rank: int) -> dict[str, torch.Tensor]:
    """A FLUX.1-wide (3072, MLP 12288) LoRA at rank 1 with every module of every block: diffusers' kohya
    converter only knows FLUX.1's widths, so it can only judge files of that width."""
    gen = torch.Generator().manual_seed(0)
    inner, mlp = 3072, 12288
    out = {}
    from loraflow.trainer.lora_format import ATTENTION, MLP, SINGLE_ATTENTION, SINGLE_MLP

    def shapes(name: str) -> tuple[int, int]:
        o = mlp if name.endswith(("proj_mlp", "net.0.proj")) else inner
        i = inner + mlp if name == "proj_out" else (mlp if name.endswith("net.2") else inner)
        return i, o

    for prefix, names, count in (("transformer_blocks", ATTENTION + MLP, 19),
                                 ("single_transformer_blocks", SINGLE_ATTENTION + SINGLE_MLP, 38)):
        for b in range(count):
            for name in names:
                i, o = shapes(name)
                out[f"transformer.{prefix}.{b}.{name}.lora_A.weight"] = torch.randn(rank, i, generator=gen) * 0.01
                out[f"transformer.{prefix}.{b}.{name}.lora_B.weight"] = torch.randn(o, rank, generator=gen) * 0.01
    return out


def test_diffusers_own_converter_reads_every_flux_key_the_check_accepts(tmp_path: Path) -> None:
    """The judge of the Flux rules: diffusers' FluxPipeline.lora_state_dict converts a kohya file the check
    accepts without leftovers, into `transformer.` keys the check accepts too; one with a module name the
    check refuses is refused by diffusers as well."""
    pytest.importorskip("diffusers")
    from diffusers import FluxPipeline

    state = _flux1_width_lora(1)
    kohya = to_kohya_layout(diffusers_modules(state, 1.0), FluxDims(inner=3072, mlp=12288))
    exp = flux(rank=1, alpha=1.0)
    kohya_path = write(tmp_path, kohya, "kohya.safetensors")
    verdict = check_file(kohya_path, exp)
    assert verdict.ok and verdict.note == "diffusers' kohya-Flux converter reads every key"
    converted = FluxPipeline.lora_state_dict(str(kohya_path))
    assert converted and all(k.startswith("transformer.") for k in converted)
    back = write(tmp_path, {k: v for k, v in converted.items() if not k.endswith(".alpha")}, "back.safetensors")
    verdict = check_file(back, exp)
    assert verdict.ok, verdict

    wrong = {k.replace("img_attn_proj", "img_attn_out"): v for k, v in kohya.items()}
    wrong_path = write(tmp_path, wrong, "wrong.safetensors")
    assert check_file(wrong_path, exp).code == "lora_invalid"
    with pytest.raises(ValueError, match="Incompatible keys"):
        FluxPipeline.lora_state_dict(str(wrong_path))
    assert DIMS.inner == 32  # the stand-ins' files are narrow: only the check's own rules judge them


def test_kontext_is_judged_as_flux_and_an_architecture_without_rules_still_by_its_values(tmp_path: Path) -> None:
    path = write(tmp_path, diffusers_lora(16, 1), "kontext.safetensors")
    assert check_file(path, flux(arch="flux_kontext")).ok
    bad = write(tmp_path, {"transformer.nope.lora_A.weight": torch.ones(16, 8),
                           "transformer.nope.lora_B.weight": torch.ones(8, 16)}, "nope.safetensors")
    assert check_file(bad, flux(arch="flux_kontext")).code == "lora_invalid"
    # FLUX.2 has no key rules here: names pass, but an all-zero B is still inert and a wrong rank invalid
    flux2 = flux(arch="flux2", geometry=None)
    assert check_file(bad, flux2).ok
    odd = write(tmp_path, {"transformer.x.lora_A.weight": torch.ones(16, 8),
                           "transformer.x.lora_B.weight": torch.ones(8, 4)}, "odd.safetensors")
    assert "do not multiply" in check_file(odd, flux2).message
    zero = write(tmp_path, {"transformer.blocks.0.attn.qkv.lora_A.weight": torch.ones(16, 8),
                            "transformer.blocks.0.attn.qkv.lora_B.weight": torch.zeros(8, 16)}, "zero.safetensors")
    verdict = check_file(zero, flux2)
    assert verdict.code == "lora_inert" and "no key rules for flux2" in verdict.note


def test_the_verdict_reads_as_a_sentence_in_the_cli(tmp_path: Path) -> None:
    from loraflow.cli.sentences import describe

    verdict = check_file(write(tmp_path, diffusers_lora(16, 1, inert=True)), flux())
    line = describe("lora.checked", verdict.to_dict())
    assert line is not None and line.startswith("result check: lora.safetensors lora_inert (the LoRA changes nothing")
    assert "None" not in line and "{" not in line
