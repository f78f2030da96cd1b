"""Whole-job bench (issue 31): one real `loraflow train`, timed by phase from the job's own events.

The step is not the job: model load, latent and text caching, compilation, samples, saves, the result
check and the bundle all cost wall clock. This runs a whole job the way a user does (`loraflow train
spec.yaml`, builtin engine, its own LORAFLOW_HOME) and splits its wall clock by the events the job
recorded: stage.started/completed, the trainer's phase events, its progress (`elapsed_s`), its checkpoint
events (`took_s`) and sample events (`round_s`). Nothing is timed from outside but the whole.

GPU (when a machine is lent): a FLUX.1-dev-geometry pipeline folder with random weights, built on the GPU
and saved to disk (12B transformer, T5-XXL and CLIP-L geometry, the FLUX VAE; tokenizers are the tiny
ones loraflow builds in code: nothing is downloaded), 20 random 1024 px images, 1000 steps at 1024 px on
one GPU, then the same job with compute.gpus 2, 4, 8 where the machine has them, and the scaling
efficiency of the steps (images per second on N GPUs over N times one GPU's).

--tiny: the tiny model on the CPU, a few steps, compute.gpus 1 and 2 (two gloo processes): the same
harness end to end, in a test.

    python bench/gpu_job.py                    # on the GPU machine (bench/gpu_run.sh shows the device call)
    python bench/gpu_job.py --tiny --out /tmp/gpu_job_tiny.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PREFIX = "LORAFLOW "  # the trainer's event lines (loraflow/trainer/events.py)
RESULTS = REPO / "bench" / "results"
PHASES = ("prepare", "start", "load", "cache", "compile", "steps", "samples", "saves", "finish", "result check",
          "bundle", "other")  # fmt: skip


def build_full_model(dest: Path) -> Path:
    """A FLUX.1-dev-geometry diffusers folder with random bf16 weights, made on the GPU, saved to disk."""
    import torch
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from loraflow.trainer.tiny import build_tiny_flux

    if (dest / "model_index.json").exists():
        return dest
    tiny = FluxPipeline.from_pretrained(build_tiny_flux(dest.parent / "tiny-flux"))
    tiny.tokenizer_2.model_max_length = 512  # the real T5 length: 512 text tokens a step, as FLUX.1-dev trains
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        )  # fmt: skip
        clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                            num_hidden_layers=12, num_attention_heads=12, projection_dim=768))
        t5 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                     num_heads=64, feed_forward_proj="gated-gelu"))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
            scaling_factor=0.3611,
        )  # fmt: skip
    torch.set_default_dtype(torch.float32)
    pipe = FluxPipeline(scheduler=tiny.scheduler, vae=vae, text_encoder=clip, tokenizer=tiny.tokenizer,
                        text_encoder_2=t5, tokenizer_2=tiny.tokenizer_2, transformer=transformer)
    pipe.save_pretrained(dest, safe_serialization=True)
    del pipe, transformer, clip, t5, vae
    torch.cuda.empty_cache()
    return dest


def make_dataset(root: Path, count: int, size: int) -> Path:
    """Random images at the training size, each with a caption."""
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i:03d}.png")
        (root / f"img{i:03d}.txt").write_text(f"a photo of bnch, picture {i}")
    return root


def write_spec(folder: Path, model: str, data: Path, gpus: int, args: argparse.Namespace) -> Path:
    spec = {
        "name": f"bench-{gpus}gpu",
        "dataset": {"path": str(data), "trigger_word": "bnch", "checks": {"min_resolution": 64}},
        "base_model": model,
        "engine": "builtin",
        "compute": {"gpus": gpus},
        "training": {"steps": args.steps, "resolution": [args.resolution], "batch_size": 1},
        "sampling": {"prompts": ["a photo of [trigger]", "[trigger] as an oil painting"],
                     "every_n_steps": args.sample_every, "width": args.resolution, "height": args.resolution,
                     "steps": args.sample_steps},
        "checkpointing": {"every_n_steps": args.save_every, "keep_last": 4},
    }  # fmt: skip
    if model != "tiny-flux":
        spec["model_family"] = "flux-dev"
    path = folder / f"spec-{gpus}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def trainer_events(log: Path) -> list[dict[str, Any]]:
    """The trainer's own events with its own clock (`t`): the store stamps them when the runner reads the log,
    which on a busy machine can be seconds late and in bursts."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(PREFIX):
            try:
                out.append(json.loads(line[len(PREFIX):]))
            except ValueError:
                continue
    return out


def phases(events: list[dict[str, Any]], trainer: list[dict[str, Any]]) -> dict[str, Any]:
    """The job's wall clock split by its own events (seconds): the runner's stages from the store, the
    trainer's phases from its lines; `other` is what no event accounts for (the runner's own bookkeeping)."""
    started = {e["data"]["stage"]: _ts(e) for e in reversed(events) if e["type"] == "stage.started"}
    done = {e["data"]["stage"]: _ts(e) for e in events if e["type"] == "stage.completed"}

    def stage(name: str) -> float:
        return done[name] - started[name] if name in done and name in started else 0.0

    def at(kind: str, phase: str | None = None) -> float:
        return next(e["t"] for e in trainer if e["event"] == kind and (phase is None or e.get("phase") == phase))

    progress = [e for e in trainer if e["event"] == "progress"]
    saves = [e for e in trainer if e["event"] == "checkpoint"]
    rounds = {e["step"]: float(e.get("round_s", 0.0)) for e in trainer if e["event"] == "sample"}
    launched = next(_ts(e) for e in events if e["type"] == "train.launched")
    loading, caching, training, result = at("phase", "loading_model"), at("phase", "caching"), at(
        "phase", "training"), at("done")  # fmt: skip
    # the builtin trainer runs the result check in its process before it says `done` (a `checking` phase)
    trained = next((e["t"] for e in trainer if e["event"] == "phase" and e.get("phase") == "checking"), result)
    save_s = sum(float(e.get("took_s", 0.0)) for e in saves)
    sample_s = sum(rounds.values())
    # the steady step: between the first and last report, less the saves and samples in between (a step's save
    # and samples come after its report)
    a, b = progress[0], progress[-1]
    between = sum(float(e.get("took_s", 0.0)) for e in saves if a["step"] <= e["step"] < b["step"])
    between += sum(r for step, r in rounds.items() if a["step"] <= step < b["step"])
    steady = (b["elapsed_s"] - a["elapsed_s"] - between) / max(1, b["step"] - a["step"])
    compile_s = max(0.0, a["elapsed_s"] - a["step"] * steady)  # the first report's steps, less steady steps
    whole = _ts(events[-1]) - _ts(events[0])
    out = {
        "prepare": stage("prepare") + stage("render") + stage("acquire"),
        "start": loading - launched,
        "load": caching - loading,
        "cache": training - caching,
        "compile": compile_s,
        "samples": sample_s,
        "saves": save_s,
        "finish": done.get("train", result) - result,
        "result check": (result - trained) + sum(stage(name) for name in done if "check" in name),  # and stage(s)
        "bundle": stage("package"),
    }
    out["steps"] = (trained - training) - compile_s - sample_s - save_s
    out["other"] = whole - sum(out.values())
    return {
        "phases_s": {k: round(out[k], 2) for k in PHASES},
        "whole_s": round(whole, 2),
        "steps": b["step"],
        "steady_s_per_step": round(steady, 4),
        "overhead_fraction": round(1 - out["steps"] / whole, 4) if whole else None,
        "result_check_measured": any("check" in name for name in done),
    }


def run_job(spec: Path, home: Path, timeout: float, tiny: bool = False) -> dict[str, Any]:
    env = {**os.environ, "LORAFLOW_HOME": str(home), "LORAFLOW_MODELS_DIR": str(home.parent / "models")}
    if tiny:  # one core per process, as one GPU per process (torchrun gives each rank 1 thread; so does one)
        env["OMP_NUM_THREADS"] = "1"
    exe = [sys.executable, "-m", "loraflow"]
    began = time.monotonic()
    proc = subprocess.run([*exe, "train", str(spec)], env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - began
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "log": (proc.stdout + proc.stderr)[-3000:]}
    jobs = json.loads(subprocess.run([*exe, "jobs", "list", "--json"], env=env, capture_output=True, text=True,
                                     check=True).stdout)  # fmt: skip
    job_id = jobs[0]["id"]
    events = json.loads(subprocess.run([*exe, "jobs", "events", job_id, "--json", "--limit", "100000"], env=env,
                                       capture_output=True, text=True, check=True).stdout)  # fmt: skip
    trainer = trainer_events(home / "jobs" / job_id / "run" / "train.log")
    return {"job": job_id, "wall_s": round(wall, 2), **phases(events, trainer)}


def gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except ImportError:
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tiny model on the CPU (1 and 2 gloo processes)")
    ap.add_argument("--gpus", type=int, nargs="+", help="compute.gpus values (default 1 2 4 8 up to the machine's)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--resolution", type=int)
    ap.add_argument("--images", type=int)
    ap.add_argument("--work", help="folder for the model, data and job homes (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per job")
    ap.add_argument("--prepare-only", action="store_true", help="build the model and data in --work, run no job")
    ap.add_argument("--out", help="results JSON (default bench/results/gpu_job.json; --tiny: gpu_job_tiny.json)")
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.steps = args.steps or (4 if tiny else 1000)
    args.resolution = args.resolution or (64 if tiny else 1024)
    args.images = args.images or (4 if tiny else 20)
    args.sample_every, args.save_every = (2, 2) if tiny else (250, 250)
    args.sample_steps = 2 if tiny else 20
    found = 0 if tiny else gpu_count()
    if not tiny and found == 0:
        print("no CUDA GPU here: run with --tiny, or on the lent GPU machine", file=sys.stderr)
        return 2
    counts = args.gpus or ([1, 2] if tiny else [n for n in (1, 2, 4, 8) if n <= found])
    work = Path(args.work) if args.work else Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_job-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    model = "tiny-flux" if tiny else str(build_full_model(work / "models" / "flux-dev-random"))
    data = make_dataset(work / "data", args.images, args.resolution)
    if args.prepare_only:
        print(f"model {model}, data {data}")
        return 0
    import torch

    results: dict[str, Any] = {
        "machine": {"gpus": found, "torch": torch.__version__,
                    "name": torch.cuda.get_device_name(0) if found else "CPU"},
        "settings": {k: getattr(args, k) for k in ("steps", "resolution", "images", "sample_every", "save_every")},
        "jobs": {},
    }
    out = Path(args.out or RESULTS / ("gpu_job_tiny.json" if tiny else "gpu_job.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # jobs of an earlier call on this machine (1 GPU, then 2 4 8): one table, one baseline
        before = json.loads(out.read_text())
        if before.get("settings") == results["settings"] and before.get("machine") == results["machine"]:
            results["jobs"] = before.get("jobs", {})
    for n in counts:
        home = work / f"home-{n}"
        shutil.rmtree(home, ignore_errors=True)
        job = run_job(write_spec(work, model, data, n, args), home, args.timeout, tiny)
        results["jobs"][str(n)] = job
        one = results["jobs"].get("1")
        if "error" not in job and one and "error" not in one:
            # images/s on N GPUs over N x one GPU's: each GPU trains batch_size a step, so it is the step-time ratio
            step_1, step_n = one["phases_s"]["steps"] / one["steps"], job["phases_s"]["steps"] / job["steps"]
            job["scaling_efficiency"] = round(step_1 / step_n, 4)
        out.write_text(json.dumps(results, indent=2) + "\n")  # after every job: a cut-short run keeps its numbers
        print(json.dumps({n: job}), flush=True)
    return 0 if all("error" not in j for j in results["jobs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
