"""JoyCaption (LLaVA) and Qwen2.5-VL: their real loading, prompting, generation and trimming code on tiny
random models of the same architectures, each in its own process."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.caption.joycaption import build_prompt
from loraflow.caption.run import captioner_options
from loraflow.dataset import DatasetRun
from loraflow.dataset.manifest import read_manifest
from loraflow.spec import CaptionPolicy, DatasetChecks


def test_joycaption_captions_missing_images(photos: Path, tmp_path: Path, cli) -> None:
    from loraflow.testing.tiny_captioners import build_tiny_joycaption

    model = build_tiny_joycaption(tmp_path / "joycaption")
    kept = (photos / "mascot_00.txt").read_text()
    result = cli(
        "caption", "run", photos, "--backend", "joycaption", "--model", model,
        "--caption-type", "straightforward", "--caption-length", "20", "--max-new-tokens", "12",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "2 captioned, 6 kept" in result.out
    assert (photos / "mascot_00.txt").read_text() == kept  # fill-missing: the user's caption stays
    for name in ("mascot_01.txt", "mascot_02.txt"):
        text = (photos / name).read_text()
        assert text.strip() and "<|" not in text  # generated (nonsense), special tokens dropped...
        assert "captioner" not in text and "straightforward" not in text  # ...and the prompt trimmed


def test_qwen_vl_captions_in_a_dataset_prepare_with_the_trigger(photos: Path, tmp_path: Path) -> None:
    from loraflow.testing.tiny_captioners import build_tiny_qwen_vl

    model = build_tiny_qwen_vl(tmp_path / "qwen")
    policy = CaptionPolicy(backend="qwen-vl", model=str(model), max_new_tokens=10, prefix="photo, ")
    report = DatasetRun(photos, DatasetChecks(min_resolution=64), policy, trigger="lfx").prepare(tmp_path / "out")
    assert report.ok
    files = {f["source"]: f for f in read_manifest(tmp_path / "out")["files"]}
    made = files["mascot_01.jpg"]
    assert made["caption_source"] == "captioner:qwen-vl"
    assert made["caption"].startswith("photo, lfx, ") and len(made["caption"]) > len("photo, lfx, ")
    assert "Describe this image" not in made["caption"] and "assistant" not in made["caption"]  # prompt trimmed
    assert files["mascot_00.jpg"]["caption_source"] == "file"
    assert not (photos / "mascot_01.txt").exists()  # the user's folder is never written by prepare


def test_joycaption_prompts_follow_its_own_wording() -> None:
    assert build_prompt("descriptive", "long") == "Write a long detailed description for this image."
    assert build_prompt("straightforward", 40).startswith("Write a 40-word straightforward caption")
    assert build_prompt("booru", "short").startswith("Generate only comma-separated Danbooru tags")
    named = build_prompt("casual", "short", name="lfx", extra="Do not mention the background.")
    assert "refer to them as lfx." in named and named.endswith("Do not mention the background.")
    with pytest.raises(ValueError):
        build_prompt("poem", "short")
    # The spec's refer_by_trigger hands the job's trigger word to the captioner.
    named_policy = CaptionPolicy(backend="joycaption", refer_by_trigger=True)
    assert captioner_options(named_policy, "lfx")["name"] == "lfx"
    assert captioner_options(CaptionPolicy(backend="joycaption"), "lfx")["name"] is None


def test_bad_caption_length_is_a_clear_cli_error(photos: Path, cli) -> None:
    result = cli("caption", "run", photos, "--backend", "joycaption", "--caption-length", "enormous")
    assert result.code == 2
    assert "caption_length" in result.err and "very long" in result.err
