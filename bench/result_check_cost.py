"""The result check's cost against the job it checks, measured in one run on the tiny model (CPU).

Trains the tiny model for STEPS steps with the catalog's tiny settings (checkpoint every STEPS/4, keep 4),
then runs the effect check and scorecard (`python -m loraflow.evaluation`'s `evaluate`) over the final
LoRA and the kept checkpoints, once rendering one picture per pipeline call (as before batching) and once
batched (`render.BATCH`), and prints the times and their ratios to training as JSON.
Run: .venv/bin/python bench/result_check_cost.py [STEPS]
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    import os

    from loraflow.dataset import DatasetRun
    from loraflow.evaluation import render
    from loraflow.evaluation.config import EvalConfig
    from loraflow.evaluation.evaluate import evaluate
    from loraflow.evaluation.plan import kept_checkpoints, loras_to_check
    from loraflow.spec import DatasetChecks
    from loraflow.trainer.config import TrainerConfig
    from loraflow.trainer.loop import train
    from loraflow.trainer.tiny import build_tiny_flux

    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    tmp = Path(tempfile.mkdtemp())
    os.environ.setdefault("LORAFLOW_HOME", str(tmp / "home"))
    model = build_tiny_flux(tmp / "model")
    DatasetRun(REPO / "examples/sample_dataset", DatasetChecks(min_resolution=64), trigger="lfx").prepare(tmp / "ds")
    out = tmp / "run"
    cfg = TrainerConfig(
        name="t", job_id="bench", model_path=str(model), dataset_dir=str(tmp / "ds"), output_dir=str(out),
        trigger_word="lfx", rank=4, alpha=4, targets="default", steps=steps, batch_size=2, learning_rate=1e-3,
        resolutions=[64], precision="fp32", gradient_checkpointing=False, sample_prompts=["a photo of lfx"],
        sample_width=64, sample_height=64, sample_steps=4, checkpoint_every=max(1, steps // 4), keep_last=4,
        max_sequence_length=64,
    )  # fmt: skip
    started = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        assert train(cfg) == 0
    train_s = time.monotonic() - started
    loras = loras_to_check(out / "t.safetensors", kept_checkpoints(out / "checkpoints"), steps)
    ecfg = EvalConfig(
        job_id="bench", model_path=str(model), loras=loras, prompts=["a photo of lfx"], trigger_word="lfx",
        reference_dir=str(tmp / "ds"), reference_kind="training", training_dir=str(tmp / "ds"),
        out_dir=str(tmp / "eval"), seeds=[42], width=64, height=64, steps=4, max_sequence_length=64,
        precision="fp32", image_encoder="builtin:tiny-dinov2", clip_model="builtin:tiny-clip", memorization=0.9999,
    )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate(ecfg)  # encoders built once, outside the timing (a real job finds them in its cache)
    timings = {}
    for batch in (1, render.BATCH):  # one render per pipeline call (as before batching), then batched
        saved, render.BATCH = render.BATCH, batch
        started = time.monotonic()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                card = evaluate(ecfg)
        finally:
            render.BATCH = saved
        timings[batch] = (time.monotonic() - started, card)
    check_s, card = timings[render.BATCH]
    print(json.dumps({
        "steps": steps, "loras_checked": len(loras), "train_s": round(train_s, 2), "check_s": round(check_s, 2),
        "check_load_and_baseline_s": card["timings"]["load_and_baseline_s"],
        "check_fraction_of_job": round(check_s / train_s, 4), "best": card["best"]["step"],
        "check_s_one_render_per_call": round(timings[1][0], 2),
        "check_fraction_one_render_per_call": round(timings[1][0] / train_s, 4),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
