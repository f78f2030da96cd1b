"""Where the ai-toolkit engine's files live and how it names them: the pin and image, the rendered config,
the save root, and the step a numbered save or sample round holds (ai-toolkit names them by its loop index)."""

from __future__ import annotations

import re
from pathlib import Path

from loraflow.layout import JobLayout
from loraflow.spec import TrainSpec

REPO = "ostris/ai-toolkit"
PIN = "27a03a91"  # HEAD read for the reference notes (version 0.12.26)
IMAGE = "ostris/aitoolkit:latest"  # code at /app/ai-toolkit; the tag-to-commit map is not published
CONFIG = "aitk_config.yaml"
SETUP = "setup_ai_toolkit.sh"
OUTPUT = "aitk"  # training_folder under the job folder; the save root is aitk/<name>/
CKPT = re.compile(r"_(\d{9})\.safetensors$")
SAMPLE = re.compile(r"^\d+__(\d{9})_(\d+)\.(jpg|jpeg|png|webp)$")


def save_root(spec: TrainSpec, layout: JobLayout) -> Path:
    return Path(layout.root) / OUTPUT / spec.name


def held_steps(index: int) -> int:
    """Steps done in a numbered save: `_000000010` is written after training loop index 10, the 11th step."""
    return index + 1


def sample_steps(index: int, total: int) -> int:
    """Steps done when a sample round was drawn: in the loop after index N (N + 1 steps), or at the end
    (named `total`, after `total` steps); a baseline round (index 0) comes before any step."""
    return index + 1 if 0 < index < total else index
