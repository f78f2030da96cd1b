"""The scorecard's rule, table and plot, the evaluation prompts, and held-out images (no torch needed)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

from loraflow.dataset import DatasetRun
from loraflow.dataset.holdout import hold_out, holdout_count
from loraflow.evaluation.config import eval_prompts, without_trigger
from loraflow.evaluation.plot import scorecard_png
from loraflow.evaluation.scorecard import choose, markdown_table, summary_rows
from loraflow.spec import DatasetChecks, parse_spec
from tests.conftest import EXAMPLES


def entry(step: int, **kw: object) -> dict:
    base = {"name": f"step-{step:06d}", "step": step, "checkpoint_step": step, "effect": 0.3, "effect_ok": True,
            "fit": 0.1, "held_out_loss": 1.0, "similarity": 0.5, "adherence": 0.2, "trigger_dependence": 0.3,
            "memorization": 0.5, "memorized": False}
    base.update(kw)
    return base


def card(*entries: dict, trigger: str | None = "lfx") -> dict:
    return {"trigger_word": trigger, "reference": "holdout", "reference_images": 2,
            "baseline": {"similarity": 0.4, "adherence": 0.2}, "checkpoints": list(entries)}


def test_best_is_the_eligible_checkpoint_with_the_highest_score() -> None:
    c = card(entry(10, fit=0.05), entry(20, fit=0.12), entry(30, fit=0.2, memorized=True, memorization=0.99),
             entry(40, effect=0.001, effect_ok=False))
    best = choose(c)
    assert best["step"] == 20 and best["checkpoint_step"] == 20
    by = {e["step"]: e for e in c["checkpoints"]}
    assert by[30]["eligible"] is False and by[30]["score"] is None
    assert by[40]["eligible"] is False
    assert by[20]["score"] > by[10]["score"]
    assert "step 20 scores highest" in best["why"] and "copies a training image" in best["why"]
    assert "barely changes the output" in best["why"]


def test_a_tie_goes_to_the_earlier_step_and_no_eligible_checkpoint_means_no_best() -> None:
    assert choose(card(entry(30), entry(10), entry(20)))["step"] == 10
    best = choose(card(entry(10, effect_ok=False, effect=0.0)))
    assert best["step"] is None and "no checkpoint is eligible" in best["why"]


def test_similarity_and_adherence_count_as_gains_over_the_base_model() -> None:
    c = card(entry(10, similarity=0.45), entry(20, similarity=0.6), trigger=None)
    choose(c)
    a, b = c["checkpoints"]
    assert abs((b["score"] - a["score"]) - 0.5 * 0.15) < 1e-9  # 0.5 x the similarity difference, no trigger term
    assert "trigger" not in choose(c)["why"]


def test_table_and_plot() -> None:
    c = card(entry(10, fit=0.05), entry(20, fit=0.12))
    c["best"] = choose(c)
    rows = summary_rows(c)
    assert [r["best"] for r in rows] == [False, True]
    table = markdown_table(c)
    assert "| 20 **best** |" in table and table.count("\n") == 3
    png = scorecard_png(c)
    assert png is not None and Image.open(io.BytesIO(png)).size == (640, 360)
    assert scorecard_png(card()) is None


def test_evaluation_prompts_carry_the_trigger_and_lose_it_cleanly() -> None:
    spec = parse_spec({"name": "x", "dataset": {"path": "d", "trigger_word": "lfx"}, "base_model": "tiny-flux",
                       "sampling": {"prompts": ["a photo of [trigger] on the moon", "a red ball"]}})
    assert eval_prompts(spec) == ["a photo of lfx on the moon", "lfx, a red ball"]
    assert without_trigger("lfx, a red ball", "lfx") == "a red ball"
    assert without_trigger("a photo of lfx on the moon", "lfx") == "a photo of on the moon"
    assert without_trigger("lfxish thing", "lfx") == "lfxish thing"
    assert spec.evaluation.image_encoder == "builtin:tiny-dinov2"  # the tiny model's catalog default


def test_holdout_count_default_holds_out_only_from_a_large_enough_dataset() -> None:
    assert holdout_count("auto", 8) == 0
    assert holdout_count("auto", 12) == 1
    assert holdout_count("auto", 30) == 3
    assert holdout_count("auto", 500) == 4
    assert holdout_count(3, 20) == 3
    assert holdout_count(10, 8) == 4  # at least four images stay for training
    assert holdout_count(0, 100) == 0


def test_hold_out_moves_images_out_of_training_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert DatasetRun(EXAMPLES / "sample_dataset", DatasetChecks(min_resolution=64), trigger="lfx").prepare(data).ok
    before = json.loads((data / "manifest.json").read_text())
    held, digest = hold_out(data, tmp_path / "holdout", 2)
    after = json.loads((data / "manifest.json").read_text())
    assert len(held) == 2 and after["count"] == before["count"] - 2
    assert digest == after["dataset_hash"] != before["dataset_hash"]
    for name in held:
        assert not (data / name).exists() and (tmp_path / "holdout" / name).is_file()
        assert (tmp_path / "holdout" / name).with_suffix(".txt").is_file()
        assert name not in {f["name"] for f in after["files"]}
    assert hold_out(data, tmp_path / "holdout", 2) == (held, None)  # done already: nothing moves again
    assert json.loads((data / "manifest.json").read_text()) == after


def test_the_notebook_defaults_to_the_best_checkpoint_and_says_why() -> None:
    from loraflow.jobs.store import Store
    from loraflow.notebook import best_checkpoint

    spec = parse_spec({"name": "x", "dataset": {"path": "d", "trigger_word": "lfx"}, "base_model": "tiny-flux"})
    store = Store()
    job = store.create_job(spec)
    assert best_checkpoint(job.id) == (None, "no scorecard: the final LoRA")
    c = card(entry(10, fit=0.2), entry(20, fit=0.1))
    c["best"] = choose(c)
    store.update_outputs(job.id, scorecard={"best": c["best"], "rows": summary_rows(c)})
    step, why = best_checkpoint(job.id)
    assert step == 10 and why.startswith("step 10 scores highest")


def test_the_estimate_counts_the_result_check_it_pays_for() -> None:
    """The check runs on the rented host before it is let go, so its time is in the estimate's total and
    cost; it grows with the files it scores and the renders per file, and is 0 when nothing is checked."""
    from loraflow.providers.estimate import estimate
    from loraflow.spec import parse_spec

    def spec(**extra: object):
        base = {"name": "x", "dataset": {"path": ".", "trigger_word": "lfx"}, "base_model": "flux-dev",
                "training": {"steps": 1000}}
        return parse_spec({**base, **extra}, "spec")

    default = estimate(spec(), "H100 SXM", 2.0, images=20)
    assert 0 < default.check_s < default.steps_s
    parts = default.setup_s + default.caching_s + default.steps_s + default.samples_s + default.transfer_s
    assert default.total_s == parts + default.check_s and default.to_dict()["check_s"] == default.check_s
    assert default.cost_usd == round(2.0 * default.total_s / 3600, 4)
    fewer = estimate(spec(evaluation={"seeds": 1, "steps": 8}), "H100 SXM", 2.0, images=20)
    more = estimate(spec(checkpointing={"every_n_steps": 100, "keep_last": 10}), "H100 SXM", 2.0, images=20)
    assert fewer.check_s < default.check_s < more.check_s
    assert estimate(spec(evaluation={"enabled": False}), "H100 SXM", 2.0, images=20).check_s == 0


def test_the_estimate_has_no_second_model_load_for_the_builtin_trainer() -> None:
    """The builtin trainer checks in its own process with FLUX.1 still loaded; an engine whose process exits
    (ai-toolkit here) has its files checked by a process that loads the model again: 34 GB from disk."""
    from loraflow.providers.estimate import check_seconds, estimate
    from loraflow.spec import parse_spec

    def spec(engine: str, **evaluation: object):
        return parse_spec({"name": "x", "dataset": {"path": ".", "trigger_word": "lfx"}, "base_model": "flux-dev",
                           "engine": {"name": engine}, "training": {"steps": 1000}, "evaluation": evaluation}, "spec")

    builtin, other = check_seconds(spec("builtin"), "H100 SXM", 20), check_seconds(spec("ai-toolkit"), "H100 SXM", 20)
    assert other - builtin == 34.0 and 0 < builtin < 30
    job = estimate(spec("builtin"), "H100 SXM", 2.0, images=20)
    gpu_time = job.caching_s + job.steps_s + job.samples_s + job.check_s
    assert job.check_s / gpu_time < 0.05  # the target, at the defaults (bench/README.md)
    # the held-out loss reads the reference images: 2 held out of 20 by default, the 8 first training images without
    assert check_seconds(spec("builtin", holdout=0), "H100 SXM", 20) > builtin
    assert check_seconds(spec("builtin", holdout=0), "H100 SXM", 20) == check_seconds(spec("builtin"), "H100 SXM", 11)


def test_a_trigger_that_does_not_matter_warns_or_with_require_trigger_fails() -> None:
    from loraflow.evaluation.config import EvalConfig
    from loraflow.evaluation.evaluate import effect_verdict

    def cfg(**kw: object) -> EvalConfig:
        return EvalConfig(job_id="j", model_path="m", loras=[], prompts=["lfx, a cat"], trigger_word="lfx",
                          reference_dir="r", training_dir="t", out_dir="o", **kw)

    entry = {"name": "final", "effect": 0.3, "effect_ok": True, "trigger_dependence": 0.01, "trigger_ok": False}
    warned = effect_verdict(entry, cfg())
    assert warned["passed"] and warned["code"] == "trigger_ignored" and "'lfx'" in warned["message"]
    strict = effect_verdict(entry, cfg(require_trigger=True))
    assert not strict["passed"] and strict["code"] == "trigger_ignored"
    assert effect_verdict({**entry, "trigger_ok": True, "trigger_dependence": 0.4}, cfg(require_trigger=True))["passed"]


def test_the_runner_takes_the_trainers_scorecard_only_for_the_files_it_checks(tmp_path: Path) -> None:
    """The builtin trainer scored every file it delivered; the check stage takes that scorecard when it names
    every file that passed the structural check (by path, written after the final LoRA), drops a file that
    failed it and chooses the best again among the rest; otherwise it runs the check itself."""
    import os
    from types import SimpleNamespace

    from loraflow.evaluation.config import LoraUnderTest
    from loraflow.running.scoring import scored_in_trainer

    final, five, ten = tmp_path / "t.safetensors", tmp_path / "5.safetensors", tmp_path / "10.safetensors"
    for f in (final, five, ten):
        f.write_bytes(b"x")
    best_was_five = card(entry(5, score=None, fit=0.9, file=str(five)), entry(10, file=str(ten)),
                         {**entry(20, file=str(final)), "name": "final", "checkpoint_step": None})
    best_was_five["best"] = choose(best_was_five)
    assert best_was_five["best"]["step"] == 5
    out = tmp_path / "evaluation"
    out.mkdir()
    (out / "scorecard.json").write_text(json.dumps(best_was_five))
    ctx = SimpleNamespace(engine=SimpleNamespace(name="builtin"), emit=lambda *a: None)
    loras = [LoraUnderTest(name="step-000010", path=str(ten), step=10), LoraUnderTest(name="final", path=str(final),
                                                                                        step=20)]
    assert scored_in_trainer(ctx, loras, out, here=True)  # step 5 failed the structural check
    taken = json.loads((out / "scorecard.json").read_text())
    assert [e["step"] for e in taken["checkpoints"]] == [10, 20] and taken["best"]["step"] != 5
    other = [LoraUnderTest(name="step-000010", path=str(tmp_path / "elsewhere"), step=10), loras[1]]
    assert not scored_in_trainer(ctx, other, out, here=True)  # not the file it scored
    assert scored_in_trainer(ctx, other, out, here=False)  # on a host: its own paths, named by step
    assert not scored_in_trainer(ctx, [*loras, LoraUnderTest(name="step-000015", path=str(five), step=15)], out,
                                 here=True)  # a file it never scored
    os.utime(final, (os.path.getmtime(out / "scorecard.json") + 10,) * 2)
    assert not scored_in_trainer(ctx, loras, out, here=True)  # an older scorecard than the final LoRA
    assert not scored_in_trainer(SimpleNamespace(engine=SimpleNamespace(name="kohya"), emit=ctx.emit), loras, out,
                                 here=True)
