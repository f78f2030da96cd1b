"""bench/gpu_step.py: its tiny run goes through the same code as the GPU run, and its FLOP count and
configuration matrix are what the GPU numbers will be divided by and measured over."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_step.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_step", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_step"] = module  # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_step", None)


@pytest.mark.slow
def test_tiny_run_measures_builtin_and_bare_loop(tmp_path: Path) -> None:
    out = tmp_path / "gpu_step.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["matmul"]["flops_per_s"] > 0 and results["machine"]["torch"]
    runs = results["runs"]
    assert [r["run"]["checkpointing"] for r in runs] == [False, True]
    for r in runs:
        assert "error" not in r, r
        assert r["builtin"]["exit_code"] == 0 and r["builtin"]["attention"] == "default"
        assert r["builtin"]["s_per_step"] > 0 and r["bare"]["s_per_step"] > 0
        assert r["builtin"]["images_per_s"] == pytest.approx(2 / r["builtin"]["s_per_step"], rel=0.01)
        assert r["builtin"]["matrix_rate_fraction"] > 0 and r["ratio_builtin_over_bare"] > 0
    assert "| 64px b2 ckpt base=none adamw |" in proc.stdout  # the table printed for the README


def test_flop_count_at_flux_dev_geometry(bench) -> None:
    plain = bench.step_flops(bench.FLUX_DEV, 1024, 1, 512, checkpointing=False)
    assert plain["tokens"] == 64 * 64 + 512
    # 57 blocks x (24 N D^2 + 4 N^2 D) is the bulk of the forward at N = 4608, D = 3072
    bulk = 57 * (24 * 4608 * 3072**2 + 4 * 4608**2 * 3072)
    assert bulk < plain["forward"] < 1.03 * bulk
    assert 2 * plain["forward"] < plain["model"] < 2.3 * plain["forward"]  # frozen base: no weight gradients
    ckpt = bench.step_flops(bench.FLUX_DEV, 1024, 2, 512, checkpointing=True)
    assert ckpt["model"] == 2 * plain["model"] and ckpt["hardware"] > ckpt["model"] * 1.4


def test_matrix_orders_acceptance_runs_first_and_presets_emulate_their_card(bench) -> None:
    runs = bench.matrix(bench.parser().parse_args(["--quick", "--presets", "24", "80"]))
    assert runs[0].name == "1024px b1 no-ckpt base=none adamw" and runs[1].name.startswith("512px b1 no-ckpt")
    presets = {r.preset: r for r in runs if r.preset}
    assert presets[24].card_gb == 24.0 and presets[24].base == "fp8" and not presets[24].bare
    assert presets[80].card_gb == 80.0 and presets[80].resolution == 1024
    full = bench.matrix(bench.parser().parse_args(["--full"]))
    assert len(full) == 3 * 2 * 3 * 3 and len({r.name for r in full}) == len(full)
    paired = bench.matrix(bench.parser().parse_args(["--quick", "--compile"]))
    assert [r.compile for r in paired] == [False, True] * 3 and paired[1].name.endswith("adamw compiled")


def test_every_builtin_vram_preset_fits_its_card_by_the_measured_memory_model(bench) -> None:
    """Peaks predicted from the H200 measurements (bench.estimate_peak_gib) leave 10 % of each card free;
    the old 80 GB preset (1024 px, batch 4, no checkpointing) is predicted far over, as it was measured."""
    from loraflow.catalog import vram_presets

    assert bench.estimate_peak_gib(1024, 4, False, "none") > 138
    assert bench.estimate_peak_gib(512, 1, False, "none") == pytest.approx(34.4 * 1.1, rel=0.05)
    for card, engines in vram_presets().items():
        t = engines["builtin"]["training"]
        peak = bench.estimate_peak_gib(
            max(t.get("resolution", [512, 768, 1024])), t["batch_size"], t["gradient_checkpointing"], t["quantize"]
        )
        assert peak <= 0.9 * card, (card, t, peak)
    assert bench.estimate_peak_gib(1024, 1, True, "fp8") <= 21.6  # the 24 GB preset's acceptance bound


@pytest.mark.slow
def test_full_geometry_path_at_reduced_depth(bench, tiny_model: Path, monkeypatch) -> None:
    """What only the GPU run takes: the stand-in encoders at FLUX.1's widths (T5 4096 x 512 tokens, CLIP
    768), a transformer of FLUX.1's head size built in bf16 on the device, through train() and the bare
    loop. One block of each kind and 2 heads keep it to seconds on the CPU."""
    import torch

    shallow = dict(bench.FLUX_DEV, num_layers=1, num_single_layers=1, num_attention_heads=2)
    monkeypatch.setattr(bench, "FLUX_DEV", shallow)
    threads = torch.get_num_threads()
    run = bench.Run(64, 1, True, steps=3, warmup=1, model_dir=str(tiny_model))
    try:
        result = bench.derive(bench.child(run), run, 1e12)
    finally:
        torch.set_num_threads(threads)
    assert result["builtin"]["exit_code"] == 0 and result["builtin"]["s_per_step"] > 0
    assert result["bare"]["s_per_step"] > 0 and result["flops_per_step"]["tokens"] == 16 + 512
    assert result["estimated_peak_gib"] > 0
