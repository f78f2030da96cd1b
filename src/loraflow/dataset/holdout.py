"""Held-out images (`evaluation.holdout`): a few prepared images moved out of the training set before any
engine sees it, so the scorecard can compare samples with pictures the LoRA never trained on.

Which images: the first by content hash (sha256), so the choice is stable for a dataset and independent
of file names and order. The manifest is rewritten without them and records their names; the dataset
hash the job keeps is the hash of what is trained on.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from loraflow.dataset.manifest import MANIFEST_NAME, ManifestFile, read_manifest, write_manifest
from loraflow.spec.evaluation import HOLDOUT_MIN_IMAGES

AUTO_FRACTION, AUTO_MAX = 10, 4  # auto: one image in ten, at most four


def holdout_count(setting: int | str, images: int) -> int:
    """How many images to hold out of `images`: auto holds out one in ten (at most 4) from a dataset of 12
    or more and none from a smaller one; a number is honoured while at least 4 images stay for training."""
    if setting == "auto":
        return 0 if images < HOLDOUT_MIN_IMAGES else min(AUTO_MAX, max(1, images // AUTO_FRACTION))
    return max(0, min(int(setting), images - 4))


def hold_out(dataset: Path, dest: Path, count: int) -> tuple[list[str], str | None]:
    """Move `count` images (and their captions) from the prepared `dataset` to `dest`; returns their names
    and the new dataset hash (None when nothing moved). Idempotent: a finished move is not repeated."""
    done = dest / MANIFEST_NAME
    if done.exists():
        return [f["name"] for f in json.loads(done.read_text(encoding="utf-8"))["files"]], None
    if count <= 0:
        return [], None
    manifest = read_manifest(dataset)
    files = [ManifestFile(**f) for f in manifest["files"]]
    chosen = {f.name for f in sorted(files, key=lambda f: f.sha256)[:count]}
    dest.mkdir(parents=True, exist_ok=True)
    ext = manifest["caption_extension"]
    for name in sorted(chosen):
        for path in (dataset / name, (dataset / name).with_suffix("." + ext)):
            if path.exists():
                shutil.move(str(path), dest / path.name)
    kept = [f for f in files if f.name not in chosen]
    held = [f for f in files if f.name in chosen]
    digest = write_manifest(dataset, kept, manifest.get("trigger_word"), ext)
    write_manifest(dest, held, manifest.get("trigger_word"), ext)  # written last: the move is complete
    return sorted(chosen), digest
