"""Captioning: the wd14 tagger's real code on a tiny ONNX model, fill-missing, caching, crashes, CSV editing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loraflow.dataset import DatasetRun
from loraflow.dataset.manifest import read_manifest
from loraflow.spec import CaptionPolicy, DatasetChecks
from loraflow.testing.tiny_wd14 import build_tiny_wd14
from tests.unit.imagekit import snapshot


@pytest.fixture
def wd14(tmp_path: Path) -> Path:
    return build_tiny_wd14(tmp_path / "wd14")


def test_caption_run_fills_only_missing(photos: Path, wd14: Path, cli) -> None:
    kept = (photos / "mascot_00.txt").read_text()
    result = cli(
        "caption", "run", photos, "--model", wd14, "--general-threshold", "0.3", "--character-threshold", "0.5"
    )
    assert result.code == 0, result.err
    assert "2 captioned, 6 kept, of 8 images" in result.out
    assert (photos / "mascot_00.txt").read_text() == kept
    tags = (photos / "mascot_01.txt").read_text().strip()
    assert "mascot character" in tags and "_" not in tags.replace("^_^", "")  # underscores become spaces
    again = cli("caption", "run", photos, "--model", wd14)
    assert "0 captioned, 8 kept" in again.out


def test_overwrite_keeps_a_backup(photos: Path, wd14: Path, cli) -> None:
    original = (photos / "mascot_00.txt").read_text()
    assert cli("caption", "run", photos, "--model", wd14, "--overwrite").code == 0
    assert (photos / "mascot_00.txt").read_text() != original
    assert (photos / ".loraflow-captions-backup" / "mascot_00.txt").read_text() == original


def test_prepare_captions_missing_images_and_caches(photos: Path, wd14: Path, tmp_path: Path) -> None:
    before = snapshot(photos)
    policy = CaptionPolicy(backend="wd14", model=str(wd14), general_threshold=0.3, character_threshold=0.5)
    report = DatasetRun(photos, DatasetChecks(min_resolution=64), policy, trigger="lfx").prepare(tmp_path / "a")
    assert report.ok
    files = {f["source"]: f for f in read_manifest(tmp_path / "a")["files"]}
    assert files["mascot_01.jpg"]["caption_source"] == "captioner:wd14"
    assert files["mascot_01.jpg"]["caption"].startswith("lfx, mascot character")
    assert files["mascot_00.jpg"]["caption_source"] == "file"
    assert snapshot(photos) == before  # the source folder is untouched
    shutil.rmtree(wd14)  # the model is gone: a re-run is served from the cache by image hash
    DatasetRun(photos, DatasetChecks(min_resolution=64), policy, trigger="lfx").prepare(tmp_path / "b")
    again = {f["source"]: f["caption"] for f in read_manifest(tmp_path / "b")["files"]}
    assert again["mascot_01.jpg"] == files["mascot_01.jpg"]["caption"]


def test_captioner_crash_is_clear_and_leaves_the_dataset_intact(photos: Path, tmp_path: Path) -> None:
    from loraflow.errors import LoraflowError

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    (broken / "selected_tags.csv").write_text("tag_id,name,category,count\n")
    before = snapshot(photos)
    policy = CaptionPolicy(backend="wd14", model=str(broken))
    with pytest.raises(LoraflowError, match="the wd14 captioner failed") as info:
        DatasetRun(photos, DatasetChecks(min_resolution=64), policy).prepare(tmp_path / "out")
    assert "no caption file was written" in info.value.render()
    assert snapshot(photos) == before and not (tmp_path / "out").exists()


def test_export_edit_import(photos: Path, tmp_path: Path, cli) -> None:
    sheet = tmp_path / "captions.csv"
    assert cli("caption", "export", photos, sheet).code == 0
    text = sheet.read_text()
    assert text.startswith("file,caption") and "mascot_01.jpg," in text
    sheet.write_text(text.replace("mascot_01.jpg,", "mascot_01.jpg,a mascot I described by hand"))
    assert cli("caption", "import", photos, sheet).code == 0
    assert (photos / "mascot_01.txt").read_text() == "a mascot I described by hand\n"
    bad = tmp_path / "bad.csv"
    bad.write_text("file,caption\n../escape.jpg,x\n")
    result = cli("caption", "import", photos, bad)
    assert result.code == 2 and "not in" in result.err
    assert not (tmp_path / "escape.txt").exists()


def test_florence2_captions_missing_images_in_its_own_process(photos: Path, tmp_path: Path, cli) -> None:
    from loraflow.testing.tiny_captioners import build_tiny_florence2

    model = build_tiny_florence2(tmp_path / "florence2")
    result = cli("caption", "run", photos, "--backend", "florence2", "--model", model, "--task", "<CAPTION>")
    assert result.code == 0, result.err
    assert "2 captioned, 6 kept" in result.out
    text = (photos / "mascot_01.txt").read_text()
    assert text.strip() and text[-1] == "\n"  # nonsense from random weights, but a real generated caption
    policy = CaptionPolicy(backend="florence2", model=str(model), mode="overwrite")
    DatasetRun(photos, DatasetChecks(min_resolution=64), policy, trigger="lfx").prepare(tmp_path / "out")
    sources = {f["caption_source"] for f in read_manifest(tmp_path / "out")["files"]}
    assert sources == {"captioner:florence2"}


def test_florence2_cleanup_rules() -> None:
    from loraflow.caption.florence2 import clean

    assert clean("The image shows a red  round mascot.\n") == "a red round mascot."
    assert clean("In this image, a cat") == "a cat"
