"""The builtin trainer's step on a GPU at the full FLUX.1-dev geometry: s/step, images/s, peak memory,
and the fraction of the card's bf16 matrix rate, for the real `train()` and a bare loop of the same step.

The transformer has FLUX.1-dev's geometry (19 double + 38 single blocks, 3072 wide, 24 heads of 128) with
random weights built on the device, so nothing is downloaded; the VAE is the tiny model's (same 8x
downsampling and 16 latent channels) and the text encoders are one-layer random models with FLUX.1's
output widths (T5 4096 x 512 tokens, pooled CLIP 768): they only run while caching, never in the step.
`train()` runs unchanged with `load_flux` swapped for these parts; the bare loop is `flow_loss`,
backward, clip, fused AdamW on tensors already on the device, synchronizing once at the end.

Each configuration runs in its own process, so a fault or an out-of-memory leaves the others measured;
results are written after each one. `--card-gb` / `--memory-fraction` cap the allocator
(`torch.cuda.set_per_process_memory_fraction`) to emulate a smaller card, and `--presets` runs the VRAM
presets of src/loraflow/catalog/vram_presets.yaml that way. The matrix rate is measured in the same run
(a bf16 8192^3 matmul); the FLOPs of a step are counted analytically (`step_flops`).

    python bench/gpu_step.py --quick --presets 12 16 24 48 80 --update-readme   # on the GPU (bench/gpu_run.sh)
    python bench/gpu_step.py --tiny                                              # the same code on a CPU, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gpu_step.json"
README = REPO / "bench" / "README.md"
MARK = "<!-- gpu_step table -->"
RESULT = "GPU_STEP_RESULT "

FLUX_DEV = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
TINY = dict(FLUX_DEV, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=(4, 4, 8))  # fmt: skip
RANK = 16


@dataclass
class Run:
    """One configuration, measured in its own process."""

    resolution: int
    batch: int
    checkpointing: bool
    base: str = "none"  # none | fp8 | nf4
    optimizer: str = "adamw"
    card_gb: float | None = None
    memory_fraction: float | None = None
    steps: int = 12
    warmup: int = 3
    bare: bool = True
    tiny: bool = False
    preset: int | None = None
    compile: bool = False  # torch.compile of the repeated blocks (regional); the trainer's training.compile
    model_dir: str = ""

    @property
    def name(self) -> str:
        ckpt = "ckpt" if self.checkpointing else "no-ckpt"
        card = f" @{self.card_gb:g}GB" if self.card_gb else ""
        label = f"preset {self.preset}: " if self.preset else ""
        compiled = " compiled" if self.compile else ""
        return f"{label}{self.resolution}px b{self.batch} {ckpt} base={self.base} {self.optimizer}{compiled}{card}"


# ---------------------------------------------------------------------------------------------- FLOPs


def step_flops(geometry: dict[str, Any], resolution: int, batch: int, text_tokens: int, checkpointing: bool) -> dict:
    """FLOPs of one LoRA training step of the transformer, counted from its shapes.

    Per block and token the frozen linears do 12 D^2 multiply-adds (double block: q, k, v, out and a
    4x MLP per stream; single block: q, k, v, the 4x MLP in and the 5D -> D out), and joint attention
    over N tokens 2 N D per token (QK^T and PV). Backward needs the input gradients only (the base is
    frozen): 1x forward for the linears, 2x for attention; LoRA (rank r on every block linear, an
    upper bound) costs 3x its forward. `model` is forward + backward; `hardware` adds the forward
    recomputed by gradient checkpointing; `three_forward` is the common 3 x forward convention.
    """
    d = geometry["attention_head_dim"] * geometry["num_attention_heads"]
    blocks = geometry["num_layers"] + geometry["num_single_layers"]
    img = (resolution // 16) ** 2
    n = img + text_tokens
    linear = 2 * 12 * n * d * d * blocks
    attention = 2 * 2 * n * n * d * blocks
    lora = 2 * 18 * RANK * n * d * blocks  # r (in + out) per token and linear: ~18 D per token and block
    edges = 2 * (img * 64 * d + text_tokens * geometry["joint_attention_dim"] * d + img * d * 64)
    forward = batch * (linear + attention + lora + edges)
    backward = batch * (linear + 2 * attention + 2 * lora + edges)
    recompute = batch * (linear + attention + lora) if checkpointing else 0
    return {
        "forward": forward,
        "model": forward + backward,
        "hardware": forward + backward + recompute,
        "three_forward": 3 * forward,
        "tokens": n,
    }


# Memory at the full geometry, from the H200 runs in issue 17 (bf16 base, rank 16, 1024 px = 4608 tokens):
# 56.7 GiB peak without checkpointing, 25.9 GiB with, against 22.2 GiB of bf16 weights; 512 px without
# checkpointing 34.4 GiB (the per-token model below predicts 33.5). Quantized bases: fp8 holds the
# blocks in 1 byte per weight, nf4 in about 0.56 (4 bits + block scales); the rest stays bf16 (~1 GiB).
BASE_GIB = {"none": 22.2, "fp8": 11.1 + 1.0, "nf4": 6.2 + 1.0}
ACTIVATION_GIB_PER_IMAGE_1024 = {False: 56.7 - 22.2, True: 25.9 - 22.2}


def estimate_peak_gib(resolution: int, batch: int, checkpointing: bool, base: str, text_tokens: int = 512) -> float:
    """Peak training memory predicted from the measured points: weights + activations linear in tokens
    (flash/efficient attention keeps no N^2 matrix) and in batch, plus 10 % for the allocator's slack."""
    tokens = (resolution // 16) ** 2 + text_tokens
    activations = ACTIVATION_GIB_PER_IMAGE_1024[checkpointing] * batch * tokens / (64 * 64 + 512)
    return round(1.1 * (BASE_GIB[base] + activations), 1)


# ------------------------------------------------------------------------------------- in the child


def _device(run: Run) -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() and not run.tiny else "cpu")


def matmul_rate(tiny: bool) -> dict:
    """The card's dense bf16 matrix rate (fp32 on a CPU), measured: the denominator of every fraction."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # the CPU figure is per core, like the tiny runs it divides
    n, iters = (8192, 30) if device.type == "cuda" else (512, 5)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync()
    seconds = (time.perf_counter() - start) / iters
    rate = {"device": str(device), "dtype": str(dtype), "n": n, "flops_per_s": 2 * n**3 / seconds}
    return {"matmul": rate, "machine": machine()}


def _cap_memory(run: Run) -> float | None:
    import torch

    if not torch.cuda.is_available() or run.tiny:
        return None
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = run.memory_fraction or (run.card_gb * 2**30 / total if run.card_gb else None)
    if fraction:
        torch.cuda.set_per_process_memory_fraction(min(1.0, fraction), 0)
    return fraction


def _quantize(transformer: Any, base: str, dtype: Any) -> None:
    """Quantize the frozen blocks in memory as load_flux's quantization_config would at load time."""
    import torch

    in_blocks = lambda module, fqn: isinstance(module, torch.nn.Linear) and "transformer_blocks" in fqn  # noqa: E731
    if base == "fp8":
        from torchao.quantization import Float8WeightOnlyConfig, quantize_

        quantize_(transformer, Float8WeightOnlyConfig(weight_dtype=torch.float8_e4m3fn), filter_fn=in_blocks)
    elif base == "nf4":
        import bitsandbytes as bnb

        for fqn, module in list(transformer.named_modules()):
            for name, child in list(module.named_children()):
                if not in_blocks(child, f"{fqn}.{name}"):
                    continue
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=dtype, quant_type="nf4", device="meta")  # fmt: skip
                q.weight = bnb.nn.Params4bit(
                    child.weight.data, requires_grad=False, quant_type="nf4", compress_statistics=False
                ).to("cuda")  # as diffusers' BitsAndBytesConfig(bnb_4bit_quant_type="nf4") quantizes at load
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(module, name, q)
        torch.cuda.empty_cache()


def _parts(run: Run, device: Any, dtype: Any, compile_here: bool = True) -> Any:
    """The tiny pipeline's VAE, tokenizers and scheduler around a transformer of the run's geometry.

    The base is built in bf16 and quantized in place, so the card's cap (`--card-gb`) is applied only
    afterwards and the peak counted from there: load_flux reads a quantized base without a bf16 copy."""
    import torch
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    from loraflow.trainer.components import load_flux

    parts = load_flux(run.model_dir, device, "fp32" if run.tiny else "bf16")
    if run.tiny:
        if run.compile and compile_here:
            parts.transformer.compile_repeated_blocks()
        return parts
    clip_cfg, t5_cfg = copy.deepcopy(parts.clip.config), copy.deepcopy(parts.t5.config)
    clip_cfg.update(dict(hidden_size=768, projection_dim=768, num_attention_heads=12, intermediate_size=256))
    t5_cfg.update(dict(d_model=FLUX_DEV["joint_attention_dim"], d_kv=64, num_heads=4, d_ff=256, num_layers=1))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**FLUX_DEV)
            clip, t5 = CLIPTextModel(clip_cfg), T5EncoderModel(t5_cfg)
    finally:
        torch.set_default_dtype(previous)
    for module in (transformer, clip, t5):
        module.requires_grad_(False).eval()
    if run.base != "none":
        _quantize(transformer, run.base, dtype)
    if run.compile and compile_here:  # compiled lazily at the first step, after the LoRA layers are in place
        transformer.compile_repeated_blocks()
    parts.transformer, parts.clip, parts.t5 = transformer, clip, t5
    _reset(device)
    _cap_memory(run)
    return parts


def _dataset(root: Path, resolution: int, count: int) -> Path:
    """Square noise images at the resolution (one bucket: every step has the same shape) + a manifest."""
    import hashlib

    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    files = []
    rng = np.random.default_rng(0)
    for i in range(count):
        name = f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (resolution, resolution, 3), dtype=np.uint8)).save(root / name)
        sha = hashlib.sha256((root / name).read_bytes()).hexdigest()
        files.append({"name": name, "sha256": sha, "caption": f"lfx, picture {i}", "width": resolution,
                      "height": resolution})  # fmt: skip
    (root / "manifest.json").write_text(json.dumps({"files": files}))
    return root


def _peak(device: Any) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def _reset(device: Any) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def run_builtin(run: Run, tmp: Path, device: Any, dtype: Any) -> dict:
    """The real `train()`, with load_flux answering the in-memory parts; timed from its progress events."""
    from loraflow.trainer import loop
    from loraflow.trainer.config import TrainerConfig

    data = _dataset(tmp / f"ds-{run.resolution}", run.resolution, max(8, 2 * run.batch))
    text_tokens = 32 if run.tiny else 512
    cfg = TrainerConfig(
        name="bench", job_id="bench", model_path=run.model_dir, dataset_dir=str(data), output_dir=str(tmp / "out"),
        rank=RANK, alpha=RANK, targets="default", steps=run.steps, batch_size=run.batch, learning_rate=1e-4,
        optimizer=run.optimizer, resolutions=[run.resolution], precision="fp32" if run.tiny else "bf16",
        gradient_checkpointing=run.checkpointing, quantize=run.base, caption_dropout=0.0,
        max_sequence_length=text_tokens, checkpoint_every=10**6, sample_at_end=False, device=str(device),
        compile="on" if run.compile else "off",  # the trainer compiles (training.compile), as for a user
    )  # fmt: skip
    _reset(device)
    real, out = loop.load_flux, io.StringIO()
    loop.load_flux = lambda *a, **k: _parts(run, device, dtype, compile_here=False)
    try:
        with contextlib.redirect_stdout(out):
            code = loop.train(cfg)
    finally:
        loop.load_flux = real
    events = [json.loads(line[9:]) for line in out.getvalue().splitlines() if line.startswith("LORAFLOW ")]
    progress = [e for e in events if e["event"] == "progress"]
    first = next((e for e in progress if e["step"] >= run.warmup), progress[0])
    last = progress[-1]
    if last["step"] == first["step"]:
        first = {"step": 0, "elapsed_s": 0.0}
    attention = next((e["attention"] for e in events if e["event"] == "log" and "attention" in e), None)
    return {
        "exit_code": code,
        "s_per_step": (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"]),
        "peak_gib": _peak(device),
        "attention": attention,
        "final_loss": last["loss"],
    }


def run_bare(run: Run, tmp: Path, device: Any, dtype: Any) -> dict:
    """The same step with nothing around it: tensors on the device, no events, one sync at the end."""
    import torch
    from peft import LoraConfig

    from loraflow.trainer.attention import configure_for_model
    from loraflow.trainer.flow import flow_loss
    from loraflow.trainer.lora_format import target_regex

    _reset(device)
    parts = _parts(run, device, dtype)
    model = parts.transformer
    configure_for_model(model, device, (run.resolution // 16) ** 2 + (32 if run.tiny else 512), dtype)
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                 target_modules=target_regex("default")))  # fmt: skip
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    if run.checkpointing:
        model.enable_gradient_checkpointing()
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True if device.type == "cuda" else None)
    side = run.resolution // 8
    geometry = TINY if run.tiny else FLUX_DEV
    text_tokens = 32 if run.tiny else 512
    latents = torch.randn(run.batch, 16, side, side, device=device)
    t5 = torch.randn(run.batch, text_tokens, geometry["joint_attention_dim"], device=device, dtype=dtype)
    pooled = torch.randn(run.batch, geometry["pooled_projection_dim"], device=device, dtype=dtype)
    gen = torch.Generator(device).manual_seed(0)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = 0.0
    for i in range(run.steps):
        if i == run.warmup:
            sync()
            start = time.perf_counter()
        with autocast:
            loss = flow_loss(parts, latents, t5, pooled, gen, sampling="sigmoid", shift=3.0, guidance=1.0, dtype=dtype)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    return {"s_per_step": (time.perf_counter() - start) / (run.steps - run.warmup), "peak_gib": _peak(device)}


def child(run: Run) -> dict:
    import torch

    device = _device(run)
    dtype = torch.float32 if run.tiny else torch.bfloat16
    if device.type == "cpu":
        torch.set_num_threads(1)  # tiny shapes: more threads only spin against each other on a busy machine
    result: dict[str, Any] = {"run": asdict(run), "name": run.name}
    with tempfile.TemporaryDirectory(prefix="gpu-step-") as tmp:
        result["builtin"] = run_builtin(run, Path(tmp), device, dtype)
        if run.bare:
            result["bare"] = run_bare(run, Path(tmp), device, dtype)
    return result


# ------------------------------------------------------------------------------------- in the parent


def machine() -> dict:
    import diffusers
    import peft
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {"gpu": props.name, "capability": list(torch.cuda.get_device_capability(0)),
                 "gpu_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}  # fmt: skip
    return info


def _spawn(args: list[str], timeout: float) -> tuple[dict | None, str]:
    path = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    try:
        proc = subprocess.run(
            [sys.executable, __file__, *args], capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired as exc:
        return None, f"timed out after {timeout:.0f} s: {str(exc.stderr or '')[-1500:]}"
    found = [line[len(RESULT) :] for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode == 0 and found:
        return json.loads(found[-1]), ""
    return None, f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-1500:]}"


def derive(result: dict, run: Run, rate: float) -> dict:
    """images/s and the fraction of the measured matrix rate, from s/step and the counted FLOPs."""
    geometry = TINY if run.tiny else FLUX_DEV
    flops = step_flops(geometry, run.resolution, run.batch, 32 if run.tiny else 512, run.checkpointing)
    result["flops_per_step"] = {k: float(v) for k, v in flops.items()}
    for kind in ("builtin", "bare"):
        part = result.get(kind)
        if part and part.get("s_per_step"):
            s = part["s_per_step"]
            part["images_per_s"] = round(run.batch / s, 3)
            part["matrix_rate_fraction"] = round(flops["model"] / s / rate, 4)
            part["matrix_rate_fraction_3x_forward"] = round(flops["three_forward"] / s / rate, 4)
            part["s_per_step"] = round(s, 4)
    if result.get("builtin", {}).get("s_per_step") and result.get("bare", {}).get("s_per_step"):
        result["ratio_builtin_over_bare"] = round(result["builtin"]["s_per_step"] / result["bare"]["s_per_step"], 3)
    if not run.tiny:
        result["estimated_peak_gib"] = estimate_peak_gib(run.resolution, run.batch, run.checkpointing, run.base)
    card = run.card_gb
    peak = result.get("builtin", {}).get("peak_gib")
    if card and peak is not None:
        result["fits_with_10pct_headroom"] = peak <= 0.9 * card
    return result


def matrix(args: argparse.Namespace) -> list[Run]:
    base = dict(steps=args.steps, warmup=args.warmup, tiny=args.tiny, card_gb=args.card_gb,
                memory_fraction=args.memory_fraction)  # fmt: skip
    runs: list[Run] = []
    if args.quick:  # the acceptance numbers first, in the order they matter
        runs += [Run(1024, 1, False, **base), Run(512, 1, False, **base), Run(1024, 1, True, **base)]
    if args.presets:
        import yaml

        presets = yaml.safe_load((REPO / "src/loraflow/catalog/vram_presets.yaml").read_text())
        for gb in args.presets:
            t = presets[gb]["builtin"]["training"]
            res = 64 if args.tiny else max(t.get("resolution", [512, 768, 1024]))  # the largest sets the peak
            settings = dict(batch=t.get("batch_size", 1), checkpointing=t.get("gradient_checkpointing", True),
                            base=t.get("quantize", "none"), optimizer=t.get("optimizer", "adamw"))  # fmt: skip
            runs.append(Run(res, **settings, **{**base, "card_gb": float(gb)}, bare=False, preset=gb))
    if args.full or not runs:
        for base_q in args.bases:
            for ckpt in args.checkpointing:
                for batch in args.batches:
                    for res in args.resolutions:
                        run = Run(res, batch, ckpt == "on", base_q, **base)
                        if run.name not in {r.name for r in runs}:
                            runs.append(run)
    if args.compile:  # the compiled twin right after each configuration, so a cut-short run has pairs
        runs = [twin for run in runs for twin in (run, replace(run, compile=True))]
    return runs


def table(results: dict) -> str:
    rows = [
        "| configuration | builtin s/step | images/s | peak GiB | bf16 rate fraction | bare s/step | builtin / bare |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["runs"]:
        b, bare = r.get("builtin") or {}, r.get("bare") or {}
        if r.get("error"):
            rows.append(f"| {r['name']} | **{r['error_code']}** | – | – | – | – | – |")
            continue
        fits = {True: " (fits)", False: " (**does not fit**)"}.get(r.get("fits_with_10pct_headroom"), "")
        peak = None if b.get("peak_gib") is None else f"{b['peak_gib']}{fits}"
        cells = [r["name"], b.get("s_per_step"), b.get("images_per_s"), peak,
                 b.get("matrix_rate_fraction"), bare.get("s_per_step"), r.get("ratio_builtin_over_bare")]  # fmt: skip
        rows.append("| " + " | ".join("–" if c is None else str(c) for c in cells) + " |")
    return "\n".join(rows)


def update_readme(results: dict) -> None:
    text = README.read_text()
    head, _, rest = text.partition(MARK)
    _, _, tail = rest.partition(MARK)
    m = results["machine"]
    rate = results["matmul"]["flops_per_s"] / 1e12
    where = f"{m.get('gpu', 'CPU')}, torch {m['torch']}, measured bf16 matrix rate {rate:.0f} TFLOP/s"
    body = f"Measured on {where} (`bench/results/gpu_step.json`):\n\n{table(results)}\n"
    README.write_text(f"{head}{MARK}\n{body}{MARK}{tail}")


def parent(args: argparse.Namespace) -> int:
    from loraflow.trainer.__main__ import failure
    from loraflow.trainer.tiny import build_tiny_flux

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-step-model-") as tmp:
        model_dir = str(build_tiny_flux(Path(tmp) / "tiny-flux"))
        # on a GPU in a child, so this process never holds a CUDA context; on the CPU (--tiny) right here
        found, error = (matmul_rate(True), "") if args.tiny else _spawn(["--matmul"], args.timeout)
        if found is None:
            print(f"matmul rate: {error}", file=sys.stderr)
            return 1
        rate = found["matmul"]
        results: dict[str, Any] = {"machine": found["machine"], "matmul": rate, "runs": []}
        for run in matrix(args):
            run.model_dir = model_dir
            if args.budget_s and time.monotonic() - started > args.budget_s:
                results["runs"].append({"name": run.name, "run": asdict(run), "error": "not run: budget spent",
                                        "error_code": "skipped"})  # fmt: skip
                continue
            print(f"-- {run.name}", file=sys.stderr, flush=True)
            result, error = _spawn(["--one", json.dumps(asdict(run))], args.timeout)
            if result is None:
                result = {"name": run.name, "run": asdict(run), "error": error, "error_code": failure(error)[0]}
            else:
                result = derive(result, run, rate["flops_per_s"])
            results["runs"].append(result)
            out.write_text(json.dumps(results, indent=2) + "\n")  # after each: a later fault loses nothing
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    if args.update_readme:
        update_readme(results)
    failed = any(r.get("error") for r in results["runs"])
    return 1 if failed and args.tiny else 0  # on a GPU an out-of-memory is a finding, not a failure


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny geometry on the CPU: the same code path in seconds")
    ap.add_argument("--quick", action="store_true", help="the acceptance configurations (1024/512 px batch 1 ...)")
    ap.add_argument("--full", action="store_true", help="the whole matrix after --quick/--presets")
    ap.add_argument("--presets", type=int, nargs="*", default=[], help="VRAM presets (GB) to check on emulated cards")
    ap.add_argument("--resolutions", type=int, nargs="+", default=[512, 768, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--checkpointing", nargs="+", choices=["off", "on"], default=["off", "on"])
    ap.add_argument("--bases", nargs="+", choices=["none", "fp8", "nf4"], default=["none", "fp8", "nf4"])
    ap.add_argument("--compile", action="store_true", help="also measure each configuration compiled (regional)")
    ap.add_argument("--card-gb", type=float, help="emulate a card of this many GB (allocator cap)")
    ap.add_argument("--memory-fraction", type=float, help="cap the allocator at this fraction of the card")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per configuration")
    ap.add_argument("--budget-s", type=float, default=0.0, help="start no configuration after this many seconds")
    ap.add_argument("--out", help="results JSON (default bench/results/gpu_step.json; --tiny: gpu_step_tiny.json)")
    ap.add_argument("--update-readme", action="store_true", help="write the table into bench/README.md")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--matmul", action="store_true", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.matmul:
        print(RESULT + json.dumps(matmul_rate(args.tiny)))
        return 0
    if args.one:
        print(RESULT + json.dumps(child(Run(**json.loads(args.one)))))
        return 0
    args.out = args.out or str(RESULTS.with_name("gpu_step_tiny.json") if args.tiny else RESULTS)
    if args.tiny:
        args.resolutions, args.batches, args.bases = [64], [2], ["none"]
        args.steps, args.warmup = min(args.steps, 3), 1
        args.full = True
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())

