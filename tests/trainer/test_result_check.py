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


def test_the_builtin_trainer_checks_in_its_own_process_without_loading_the_base_again(
    make_config, tiny_model, sample_data, tmp_path, monkeypatch
) -> None:
    """The builtin engine's process (`python -m loraflow.evaluation.after_training`) trains, then runs the
    effect check and scorecard on the base it has loaded: one load in all (the separate process loaded it a
    second time), and the same verdicts as the separate process gives on the same files."""
    from loraflow.evaluation import after_training
    from loraflow.evaluation import evaluate as evaluate_module
    from loraflow.trainer import components, loop

    loads: list[str] = []

    def counted(*args: object, **kw: object):
        loads.append(str(args[0]))
        return components.load_flux(*args, **kw)

    monkeypatch.setattr(loop, "load_flux", counted)
    monkeypatch.setattr(evaluate_module, "load_flux", counted)
    cards = {}
    for name, lr in (("trained", 1e-3), ("untrained", 1e-9)):
        cfg = make_config(name, steps=10, checkpoint_every=5, learning_rate=lr)
        engine_cfg, eval_path = tmp_path / f"{name}.json", tmp_path / f"{name}-eval.json"
        cfg.write(engine_cfg)
        eval_config(tiny_model, tmp_path, [], tmp_path / "no-holdout", sample_data,
                    out_dir=str(tmp_path / name / "evaluation")).write(eval_path)
        loads.clear()
        with contextlib.redirect_stdout(io.StringIO()) as said:
            assert after_training.main([str(eval_path), str(engine_cfg)]) == 0
        assert len(loads) == 1, loads  # the trainer's load; the check reused it
        out = tmp_path / name / "evaluation"
        cards[name] = json.loads((out / "scorecard.json").read_text())
        assert cards[name]["timings"]["model_already_loaded"]
        ran = json.loads((out / "config.json").read_text())  # what ran: this run's files, the training images
        assert [lo["name"] for lo in ran["loras"]] == ["step-000005", "final"] and ran["reference_kind"] == "training"
        assert "eval.done" in (out / "evaluation.log").read_text() and not (out / after_training.ATTEMPT).exists()
        # each step of the check moves the trainer's log (the stall detector reads it); `done` once it is over
        assert said.getvalue().count('"phase": "checking"') > len(ran["loras"])
        assert said.getvalue().rindex('"event": "done"') > said.getvalue().rindex('"phase": "checking"')
        # the separate process over the same files: the same verdicts (one more load: its own)
        separate = evaluate(EvalConfig.read(out / "config.json").model_copy(update={"out_dir": str(tmp_path / "sep")}))
        assert len(loads) == 2
        for mine, theirs in zip(cards[name]["checkpoints"], separate["checkpoints"], strict=True):
            assert mine["name"] == theirs["name"] and mine["effect_ok"] == theirs["effect_ok"]
            assert mine["effect"] == pytest.approx(theirs["effect"], abs=2e-3)
            assert mine["held_out_loss"] == pytest.approx(theirs["held_out_loss"], rel=1e-3)
        assert cards[name]["effect_check"]["passed"] == separate["effect_check"]["passed"]
        assert cards[name]["best"]["name"] == separate["best"]["name"]
    assert cards["trained"]["effect_check"]["passed"]
    inert = cards["untrained"]["effect_check"]
    assert not inert["passed"] and inert["code"] == "lora_inert"


def test_the_held_out_loss_in_batches_is_the_mean_of_each_draw_alone(tiny_model, sample_data) -> None:
    """The held-out loss runs its forwards several at a time with noise drawn once per run; it is still the
    mean of each (image, draw)'s own loss from a generator seeded with the draw's number, as one at a time."""
    import torch

    from loraflow.evaluation.evaluate import captioned
    from loraflow.evaluation.render import LOSS_BATCH, Renderer
    from loraflow.trainer.components import load_flux, pick_device
    from loraflow.trainer.data import load_pixels
    from loraflow.trainer.flow import encode_images, flow_loss, sample_latents

    parts = load_flux(tiny_model, pick_device("cpu"), "fp32")
    renderer = Renderer(parts, width=64, height=64, steps=2, guidance=3.5, max_sequence_length=32)
    items = captioned(sample_data)
    assert len(items) * 4 > LOSS_BATCH  # more than one batch
    vae, alone = parts.vae.config, []
    with torch.no_grad():
        for path, caption in items[:8]:
            params = encode_images(parts, load_pixels(path, (64, 64)).unsqueeze(0))
            t5, pooled = renderer.embed(caption)
            for k in range(4):
                gen = torch.Generator().manual_seed(k)
                latents = sample_latents(params, gen, vae.shift_factor or 0.0, vae.scaling_factor)
                alone.append(float(flow_loss(parts, latents, t5, pooled, gen, sampling="sigmoid", shift=3.0,
                                             guidance=1.0, dtype=torch.float32)))
    batched = renderer.held_out_loss(items)
    assert batched == pytest.approx(sum(alone) / len(alone), rel=1e-5)
    assert renderer.held_out_loss(items) == batched  # the same draws for every LoRA


def test_a_check_in_the_trainer_that_cannot_start_never_fails_the_training(make_config, tmp_path) -> None:
    """A job rendered before the check ran in the trainer has no engine/evaluation.json: the trainer trains,
    writes its LoRA, warns and exits 0 (the runner then checks in a process of its own)."""
    from loraflow.evaluation import after_training

    cfg = make_config("old-job", steps=2, checkpoint_every=2)
    cfg.write(tmp_path / "config.json")
    with contextlib.redirect_stdout(io.StringIO()) as said:
        assert after_training.main([str(tmp_path / "missing.json"), str(tmp_path / "config.json")]) == 0
    assert (Path(cfg.output_dir) / "t.safetensors").is_file()
    assert "result check in the trainer could not start" in said.getvalue() and '"event": "done"' in said.getvalue()
