"""Steps per second of the builtin trainer against a bare reference loop, measured in one run.

The reference is the same tiny model, data, LoRA and optimizer step with nothing else: latents and text
embeddings held in memory, no events, no checkpoints. The ratio (builtin / bare) shows what loraflow's
machinery (cache reads, event lines, progress) costs per step. Run: .venv/bin/python bench/trainer_overhead.py
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
STEPS = 200


def main() -> None:
    from peft import LoraConfig

    from loraflow.dataset import DatasetRun
    from loraflow.spec import DatasetChecks
    from loraflow.trainer.components import load_flux
    from loraflow.trainer.config import TrainerConfig
    from loraflow.trainer.data import load_pixels, load_samples
    from loraflow.trainer.flow import encode_images, encode_prompts, flow_loss, sample_latents
    from loraflow.trainer.loop import train
    from loraflow.trainer.lora_format import target_regex
    from loraflow.trainer.tiny import build_tiny_flux

    tmp = Path(tempfile.mkdtemp())
    model = build_tiny_flux(tmp / "model")
    DatasetRun(REPO / "examples/sample_dataset", DatasetChecks(min_resolution=64), trigger="lfx").prepare(tmp / "ds")
    cfg = TrainerConfig(
        name="b",
        job_id="b",
        model_path=str(model),
        dataset_dir=str(tmp / "ds"),
        output_dir=str(tmp / "out"),
        rank=4,
        alpha=4,
        targets="default",
        steps=STEPS,
        batch_size=2,
        learning_rate=1e-3,
        resolutions=[64],
        precision="fp32",
        gradient_checkpointing=False,
        checkpoint_every=10_000,
        max_sequence_length=64,
        caption_dropout=0.0,
        sample_at_end=False,
    )

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        train(cfg)
    progress = [json.loads(line[9:]) for line in out.getvalue().splitlines() if '"progress"' in line]
    builtin_rate = progress[-1]["rate"]

    # The bare loop: same model, LoRA, data and step.
    torch.manual_seed(cfg.seed)
    parts = load_flux(model, torch.device("cpu"), "fp32")
    parts.transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=target_regex("default"))
    )
    params = [p for p in parts.transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    samples = load_samples(tmp / "ds", [64], 1)
    latents = [encode_images(parts, load_pixels(tmp / "ds" / s.name, s.size).unsqueeze(0))[0] for s in samples]
    texts = [encode_prompts(parts, [s.caption], 64) for s in samples]
    gen = torch.Generator().manual_seed(0)
    parts.transformer.train()
    start = time.monotonic()
    for step in range(STEPS):
        idx = [(2 * step) % len(samples), (2 * step + 1) % len(samples)]
        x = torch.stack([sample_latents(latents[i].unsqueeze(0), gen, 0.1159, 0.3611)[0] for i in idx])
        t5 = torch.cat([texts[i][0] for i in idx])
        pooled = torch.cat([texts[i][1] for i in idx])
        loss = flow_loss(parts, x, t5, pooled, gen, sampling="sigmoid", shift=3.0, guidance=1.0, dtype=torch.float32)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    bare_rate = STEPS / (time.monotonic() - start)
    result = {
        "steps": STEPS,
        "builtin_steps_per_s": round(builtin_rate, 2),
        "bare_steps_per_s": round(bare_rate, 2),
        "ratio_builtin_over_bare": round(builtin_rate / bare_rate, 3),
    }
    print(json.dumps(result, indent=2))
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "trainer_overhead.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
