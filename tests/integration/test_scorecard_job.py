"""A tiny job end to end with its result check: scored checkpoints, the best one chosen and explained, the
scorecard in the job's outputs, events and webhook name, `jobs show`, the bundle and the model card;
held-out images kept out of training."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.notify.formats import EVENTS
from tests.conftest import EXAMPLES


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "shared-models"))


def twelve_images(tmp_path: Path) -> Path:
    """The sample dataset plus four more mascots (shifted copies): 12 images, enough for `holdout: auto`."""
    folder = tmp_path / "twelve"
    folder.mkdir()
    for src in sorted(EXAMPLES.joinpath("sample_dataset").glob("*.jpg")):
        Image.open(src).save(folder / src.name)
        (folder / src.with_suffix(".txt").name).write_text(src.with_suffix(".txt").read_text())
    for i, src in enumerate(sorted(EXAMPLES.joinpath("sample_dataset").glob("*.jpg"))[:4]):
        img = Image.open(src).transpose(Image.Transpose.FLIP_LEFT_RIGHT).rotate(90)
        img.save(folder / f"extra_{i}.jpg")
        (folder / f"extra_{i}.txt").write_text("[trigger], a red round mascot, turned\n")
    return folder


def test_a_tiny_job_is_scored_and_its_best_checkpoint_explained(tmp_path: Path, cli) -> None:
    spec = {
        "name": "mascot",
        "dataset": {"path": str(twelve_images(tmp_path)), "trigger_word": "lfx"},
        "base_model": "tiny-flux",
        "training": {"steps": 20},
        "sampling": {"prompts": ["[trigger] on the moon"], "every_n_steps": 0},
        "checkpointing": {"every_n_steps": 10, "keep_last": 5},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = cli("train", tmp_path / "spec.yaml")
    assert result.code == 0, result.out + result.err
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.COMPLETED
    # held out: one image in ten of twelve, moved out of what the engine trained on
    assert len(job.outputs.holdout) == 1 and job.outputs.images == 11
    manifest = json.loads((job.folder / "dataset" / "manifest.json").read_text())
    assert job.outputs.holdout[0] not in {f["name"] for f in manifest["files"]}
    assert (job.folder / "evaluation" / "holdout" / job.outputs.holdout[0]).is_file()
    # scored: the step-10 checkpoint and the final LoRA (step 20)
    summary = job.outputs.scorecard
    assert summary is not None and summary["effect_check"]["passed"]
    assert [r["step"] for r in summary["rows"]] == [10, 20]
    assert summary["reference"] == "holdout" and summary["reference_images"] == 1
    best = summary["best"]
    assert best["step"] in (10, 20) and f"step {best['step']} scores highest" in best["why"]
    assert sum(r["best"] for r in summary["rows"]) == 1
    # scored by the builtin trainer's own process after training, on the base model it had loaded
    assert summary["timings"]["model_already_loaded"]
    assert "scored in the trainer's process" in " ".join(str(e.data) for e in Store().events(job.id, types=["log"]))
    types = [e.type for e in store.events(job.id)]
    assert "result.scored" in types and "result.effect" in types and "result.scored" in EVENTS
    assert types.index("result.scored") < types.index("job.completed")
    # jobs show and the API's JSON
    shown = cli("jobs", "show", job.id)
    assert "scorecard" in shown.out and f"best checkpoint: step {best['step']}" in shown.out
    as_json = json.loads(cli("jobs", "show", job.id, "--json").out)
    assert as_json["artifacts"]["scorecard"]["best"]["step"] == best["step"]
    # the bundle: scorecard.json (no paths of this machine), its plot, the card's section
    with zipfile.ZipFile(job.outputs.bundle) as zf:
        names = set(zf.namelist())
        card = json.loads(zf.read("scorecard.json"))
        readme = zf.read("README.md").decode()
        meta = json.loads(zf.read("metadata.json"))
    assert {"scorecard.json", "scorecard.png"} <= names
    assert card["best"]["step"] == best["step"] and all("file" not in e for e in card["checkpoints"])
    assert "## Result check" in readme and "![scorecard](scorecard.png)" in readme
    assert meta["best_checkpoint"]["step"] == best["step"]


def test_with_require_trigger_a_lora_that_works_without_its_trigger_fails_the_job(tmp_path: Path, cli) -> None:
    # the tiny model's random text encoders give the word no meaning: its share of the effect is ~0.0-0.06
    spec = {
        "name": "mascot",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "tiny-flux",
        "training": {"steps": 10},
        "sampling": {"every_n_steps": 0},
        "evaluation": {"require_trigger": True, "min_trigger": 0.9},
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = cli("train", tmp_path / "spec.yaml")
    assert result.code != 0
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.FAILED
    (error,) = store.events(job.id, types=["error"])
    assert error.data["code"] == "trigger_ignored" and "'lfx'" in error.data["message"]
    assert "require_trigger: false" in error.data["hint"] and not job.outputs.bundle
