"""Paired datasets for edit models (issue 30): every problem of a pair set named before anything is rented,
and a good Kontext pair set trained end to end on the ai-toolkit stand-in with the pairs' samples bundled."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml
from PIL import Image

from loraflow.dataset import DatasetRun, pair_needs
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.publish.bundle import verify_bundle
from loraflow.spec import parse_spec


def image(path: Path, size: tuple[int, int], color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def pair_set(root: Path, broken: bool) -> Path:
    """Five targets with instructions and their controls; `broken` leaves c without its control, gives b a
    control of another aspect and d no caption."""
    for i, stem in enumerate("abcde"):
        image(root / f"{stem}.png", (320, 320), (40 * i, 200 - 30 * i, 90))
        if not (broken and stem == "d"):
            (root / f"{stem}.txt").write_text(f"make the square {['red', 'green', 'blue', 'gold', 'pink'][i]}\n")
        if not (broken and stem == "c"):
            size = (640, 320) if broken and stem == "b" else (320, 320)
            image(root / "control" / f"{stem}.png", size, (10 * i, 10, 200 - 20 * i))
    return root


@pytest.fixture
def engines_dir(tmp_path: Path) -> Path:
    root = tmp_path / "engines" / "ai-toolkit"
    root.mkdir(parents=True)
    (root / "run.py").write_text("from loraflow.testing.aitoolkit_standin import main\nmain()\n")
    return root


def kontext(path: Path, **extra: object) -> dict:
    return {"name": "edits", "base_model": "flux-kontext-dev", "engine": "ai-toolkit",
            "dataset": {"path": str(path), "control": "control", "checks": {"min_images": 4}}, **extra}


def test_kontext_pairs_with_a_missing_control_a_size_mismatch_and_no_caption_are_refused_each_named(
    tmp_path: Path, engines_dir: Path, cli
) -> None:
    data = pair_set(tmp_path / "photos", broken=True)
    spec_file = tmp_path / "spec.yaml"
    spec = kontext(data)
    spec["engine"] = {"name": "ai-toolkit", "options": {"path": str(engines_dir)}}
    spec_file.write_text(yaml.safe_dump(spec))

    checked = cli("dataset", "check", data, "--spec", spec_file, "--json")
    assert checked.code == 2
    errors = {(f["code"], f["file"]) for f in json.loads(checked.out)["findings"] if f["severity"] == "error"}
    assert errors == {
        ("missing_control", "c.png"),
        ("control_size_mismatch", "control/b.png"),
        ("missing_instruction", "d.png"),
    }

    trained = cli("train", spec_file)  # refused before a job exists: nothing made, nothing rented
    assert trained.code == 2
    out = trained.out + trained.err
    assert "target image has no control image" in out and "control is 640x320 but its target is 320x320" in out
    assert "has no caption: an edit model learns the instruction" in out
    assert Store().list_jobs() == []


def test_pairs_report_counts_and_several_controls_are_numbered(tmp_path: Path) -> None:
    data = tmp_path / "photos"
    for i, stem in enumerate("abcd"):
        image(data / f"{stem}.png", (320, 320), (60 * i, 2, 3))
        (data / f"{stem}.txt").write_text("put the hat from image 2 on the person in image 1\n")
        image(data / "control" / f"{stem}_0.png", (320, 320), (4, 5, 6))
        image(data / "control" / f"{stem}_1.png", (256, 512), (7, 8, 9))  # several controls may differ in size
    image(data / "control" / "zz.png", (320, 320), (0, 0, 0))
    spec = parse_spec({"name": "m", "base_model": "qwen-image-edit-2509", "dataset": {
        "path": str(data), "control": "control"}, "sampling": {"prompts": ["x"], "controls": [["a_0.png", "a_1.png"]]}})
    run = DatasetRun(data, spec.dataset.checks, pairs=pair_needs(spec))
    report = run.prepare(tmp_path / "out")
    assert report.ok and report.pairs == 4
    assert "orphan_control" in [f.code for f in report.warnings]
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    a = next(f for f in manifest["files"] if f["name"] == "a.png")
    assert a["controls"] == [".control/1/a.png", ".control/2/a.png"]
    assert (out / ".control/all/a_0.png").is_file() and (out / ".control/all/a_1.png").is_file()  # musubi's names
    assert manifest["sample_controls"] == [[".control/samples/0_0.png", ".control/samples/0_1.png"]]
    with Image.open(out / ".control/samples/0_1.png") as img:
        assert img.size == (256, 512)


def test_named_sample_controls_must_exist(tmp_path: Path) -> None:
    data = pair_set(tmp_path / "photos", broken=False)
    spec = parse_spec(kontext(data, sampling={"prompts": ["make it red"], "controls": ["nope.png"]}))
    report = DatasetRun(data, spec.dataset.checks, pairs=pair_needs(spec)).check()
    assert [(f.code, f.file) for f in report.errors] == [("sample_control_missing", "control/nope.png")]


def test_good_kontext_pairs_train_end_to_end_and_the_bundle_holds_the_pairs_samples(
    tmp_path: Path, engines_dir: Path, cli
) -> None:
    data = pair_set(tmp_path / "photos", broken=False)
    spec = kontext(data, training={"steps": 20, "resolution": [256]},
                   sampling={"prompts": ["make the square red", "make the square pink"], "controls": ["e.png"],
                             "every_n_steps": 10},
                   checkpointing={"every_n_steps": 10, "keep_last": 4})
    spec["engine"] = {"name": "ai-toolkit", "options": {"path": str(engines_dir)}}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli("train", path)
    assert result.code == 0, result.out + result.err
    job = Store().list_jobs()[0]
    assert job.state is JobState.COMPLETED and job.step == 20
    config = yaml.safe_load((job.folder / "engine" / "aitk_config.yaml").read_text())["config"]["process"][0]
    assert config["datasets"][0]["control_path"].endswith("dataset/.control/1")
    assert "Loading Flux Kontext model" in (job.folder / "run" / "train.log").read_text()  # its model's own lines
    assert (job.folder / "dataset" / ".control" / "1" / "a.png").is_file()
    assert verify_bundle(Path(job.outputs.bundle)) == []
    with zipfile.ZipFile(job.outputs.bundle) as zf:
        names = set(zf.namelist())
        prompts = json.loads(zf.read("samples/prompts.json"))
        control = zf.read("samples/controls/0_0.png")
    assert {"samples/controls/0_0.png", "samples/controls/1_0.png", "samples/step-000020/00.jpg"} <= names
    assert (data / "control" / "e.png").read_bytes() != b"" and control[:8] == b"\x89PNG\r\n\x1a\n"
    assert all(item["controls"] == [f"controls/{item['file'][-6:-4].lstrip('0') or '0'}_0.png"] for item in prompts)
