"""The result check's cost against the job it checks, measured in one run on the tiny model (CPU).

Trains the tiny model for STEPS steps with the catalog's tiny settings (checkpoint every STEPS/4, keep 4)
the way the builtin engine runs it: the effect check and scorecard in the trainer's process right after
training, on the base model it has loaded (`evaluation/after_training.py` `check_in_trainer`, timed on its
own). Then, over the same files, the check as a process of its own runs it (`evaluate`, loading the base
model again: what every other engine's files get), and prints the times and their ratios to training as JSON.
Run: OMP_NUM_THREADS=1 .venv/bin/python bench/result_check_cost.py [STEPS]
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from loraflow.dataset import DatasetRun
    from loraflow.evaluation.after_training import check_in_trainer
    from loraflow.evaluation.config import EvalConfig
    from loraflow.evaluation.encoders import resolve_encoder
    from loraflow.evaluation.evaluate import evaluate
    from loraflow.spec import DatasetChecks
    from loraflow.trainer.config import TrainerConfig
    from loraflow.trainer.loop import train
    from loraflow.trainer.tiny import build_tiny_flux

    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    tmp = Path(tempfile.mkdtemp())
    os.environ.setdefault("LORAFLOW_HOME", str(tmp / "home"))
    load_at_start = os.getloadavg()[0]
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
    ecfg = EvalConfig(
        job_id="bench", model_path=str(model), loras=[], prompts=["a photo of lfx"], trigger_word="lfx",
        reference_dir=str(tmp / "ds"), reference_kind="training", training_dir=str(tmp / "ds"),
        out_dir=str(out / "evaluation"), seeds=[42], width=64, height=64, steps=4, max_sequence_length=64,
        precision="fp32", image_encoder="builtin:tiny-dinov2", clip_model="builtin:tiny-clip", memorization=0.9999,
    )  # fmt: skip
    ecfg.write(tmp / "evaluation.json")
    for ref in (ecfg.image_encoder, ecfg.clip_model):
        resolve_encoder(ref)  # built once, outside the timing (a real job finds them in its cache)
    timed: dict[str, Any] = {}

    def after(parts: Any, total: int) -> None:  # what `python -m loraflow.evaluation.after_training` runs
        began = time.monotonic()
        timed["card"] = check_in_trainer(cfg, tmp / "evaluation.json", parts, total)
        timed["check_s"] = time.monotonic() - began

    started = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        assert train(cfg, after=after) == 0
    train_s = time.monotonic() - started - timed["check_s"]
    card = timed["card"]
    assert card is not None, "the check in the trainer did not finish"
    ran = EvalConfig.read(out / "evaluation" / "config.json")  # the same files, checked as a separate process
    started = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()):
        separate = evaluate(ran.model_copy(update={"out_dir": str(tmp / "separate")}))
    separate_s = time.monotonic() - started
    assert [e["effect_ok"] for e in separate["checkpoints"]] == [e["effect_ok"] for e in card["checkpoints"]]
    print(json.dumps({
        "steps": steps, "loras_checked": len(ran.loras), "train_s": round(train_s, 2),
        "check_s": round(timed["check_s"], 2), "check_load_and_baseline_s": card["timings"]["load_and_baseline_s"],
        "check_fraction_of_job": round(timed["check_s"] / train_s, 4), "best": card["best"]["step"],
        "check_s_separate_process": round(separate_s, 2),
        "check_separate_load_and_baseline_s": separate["timings"]["load_and_baseline_s"],
        "check_fraction_separate_process": round(separate_s / train_s, 4),
        "load_average_start_end": [round(load_at_start, 2), round(os.getloadavg()[0], 2)],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
