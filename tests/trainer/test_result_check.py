"""The result check on the tiny model: the effect check tells a trained LoRA from an untrained one, and the
scorecard ranks a checkpoint trained on the dataset above one trained on unrelated images.

Everything goes through the real code: LoRA files written by the trainer, loaded onto the base with
diffusers, encoders built as tiny random CLIP/DINOv2 folders and loaded with from_pretrained."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loraflow.dataset import DatasetRun
from loraflow.dataset.holdout import hold_out
from loraflow.evaluation.__main__ import main as evaluation_main
from loraflow.evaluation.config import EvalConfig, LoraUnderTest
from loraflow.evaluation.evaluate import effect_verdict, evaluate
from loraflow.spec import DatasetChecks, EvaluationSpec
from loraflow.trainer.loop import train

pytestmark = pytest.mark.slow


def quiet_train(cfg) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert train(cfg) == 0


def eval_config(tiny_model: Path, tmp_path: Path, loras: list[LoraUnderTest], reference: Path, training: Path,
                **kw: object) -> EvalConfig:
    base = dict(
        job_id="j", model_path=str(tiny_model), loras=loras, prompts=["a photo of lfx on the moon", "lfx in a garden"],
        trigger_word="lfx", reference_dir=str(reference), training_dir=str(training), out_dir=str(tmp_path / "eval"),
        seeds=[0], width=64, height=64, steps=2, max_sequence_length=32, precision="fp32",
        image_encoder="builtin:tiny-dinov2", clip_model="builtin:tiny-clip", memorization=0.9999,
    )
    base.update(kw)
    return EvalConfig(**base)


def test_trained_lora_passes_the_effect_check_and_an_untrained_one_fails(make_config, tiny_model, sample_data,
                                                                         tmp_path, capsys) -> None:
    trained = make_config("trained", steps=10, checkpoint_every=10)
    untrained = make_config("untrained", steps=2, checkpoint_every=2, learning_rate=1e-9)
    quiet_train(trained)
    quiet_train(untrained)
    loras = [LoraUnderTest(name="untrained", path=str(Path(untrained.output_dir) / "t.safetensors"), step=1),
             LoraUnderTest(name="trained", path=str(Path(trained.output_dir) / "t.safetensors"), step=2)]
    cfg = eval_config(tiny_model, tmp_path, loras, sample_data, sample_data)
    assert cfg.min_effect == EvaluationSpec().min_effect  # the spec's default is the threshold calibrated here
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    capsys.readouterr()
    assert evaluation_main([str(tmp_path / "cfg.json")]) == 0  # the process entry point, as the runner starts it
    events = [json.loads(line[9:]) for line in capsys.readouterr().out.splitlines() if line.startswith("LORAFLOW ")]
    card = json.loads((tmp_path / "eval" / "scorecard.json").read_text())
    by = {e["name"]: e for e in card["checkpoints"]}
    assert by["trained"]["effect"] >= cfg.min_effect > by["untrained"]["effect"]
    assert by["trained"]["effect_ok"] and not by["untrained"]["effect_ok"]
    assert effect_verdict(by["trained"], cfg)["passed"]
    verdict = effect_verdict(by["untrained"], cfg)
    assert not verdict["passed"] and verdict["code"] == "lora_inert"
    assert card["best"]["name"] == "trained"  # the untrained one is not eligible
    assert "not eligible" in card["best"]["why"]
    assert {e["name"] for e in events if e["event"] == "eval.effect"} == {"trained", "untrained"}
    assert any(e["event"] == "eval.done" for e in events)
    assert (tmp_path / "eval" / "samples" / "trained" / "00.png").is_file()


def static_dataset(root: Path, count: int) -> Path:
    """A dataset unlike the sample mascots: green static, distinct per image."""
    src = root / "static-src"
    src.mkdir(parents=True)
    for i in range(count):
        arr = np.random.default_rng(i).integers(0, 256, (128, 128, 3), dtype=np.uint8)
        arr[..., 1] = 255
        Image.fromarray(arr).save(src / f"static_{i:02d}.png")
        (src / f"static_{i:02d}.txt").write_text("[trigger], green static noise\n")
    out = root / "static"
    assert DatasetRun(src, DatasetChecks(min_resolution=64), trigger="lfx").prepare(out).ok
    return out


def test_scorecard_ranks_the_dataset_checkpoint_above_one_trained_on_unrelated_images(
    make_config, tiny_model, sample_data, tmp_path
) -> None:
    dataset = static_dataset(tmp_path, 10)
    held, _ = hold_out(dataset, tmp_path / "holdout", 2)
    assert len(held) == 2 and len(json.loads((dataset / "manifest.json").read_text())["files"]) == 8
    settings = dict(steps=60, checkpoint_every=60, learning_rate=3e-3, caption_dropout=0.0)
    on_dataset = make_config("on-dataset", dataset_dir=str(dataset), **settings)
    unrelated = make_config("unrelated", dataset_dir=str(sample_data), **settings)
    quiet_train(on_dataset)
    quiet_train(unrelated)
    loras = [LoraUnderTest(name="step-000001", path=str(Path(unrelated.output_dir) / "t.safetensors"), step=1),
             LoraUnderTest(name="step-000002", path=str(Path(on_dataset.output_dir) / "t.safetensors"), step=2)]
    with contextlib.redirect_stdout(io.StringIO()):
        card = evaluate(eval_config(tiny_model, tmp_path, loras, tmp_path / "holdout", dataset))
    by = {e["name"]: e for e in card["checkpoints"]}
    good, other = by["step-000002"], by["step-000001"]
    assert card["reference_images"] == 2 and card["training_images"] == 8
    assert good["held_out_loss"] < other["held_out_loss"] < card["baseline"]["held_out_loss"]
    assert good["score"] > other["score"]
    assert card["best"]["step"] == 2 and card["best"]["checkpoint_step"] == 2
    assert "step 2 scores highest" in card["best"]["why"]
