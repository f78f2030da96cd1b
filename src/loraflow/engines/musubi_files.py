"""Where the musubi engine's files live and how musubi-tuner names them: the pin, the rendered files,
one output folder per run (`from-<cumulative step>`), the checkpoint, state and sample names."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from loraflow.layout import JobLayout

REPO = "kohya-ss/musubi-tuner"
PIN = "30c658c4"  # main, v0.3.4 (2026-06-24): Wan 2.1 and Wan 2.2 (A14B) training
OUTPUT = "musubi"
DATASET = "dataset.toml"
ARGS = "args.json"
SCRIPT = "train.sh"
SETUP = "setup_musubi.sh"
SCRIPTS = "src/musubi_tuner"  # where the entry points live in the checkout
STEP_FILE = re.compile(r"-step(\d{8})\.safetensors$")
STATE_DIR = re.compile(r"-step(\d{8})-state$")
SEGMENT = re.compile(r"^from-(\d{8})$")
# trainer_base.sample_images: <name>_<step:06d>_<prompt:02d>_<YYYYmmddHHMMSS>_<seed>, one-frame samples as
# save_images_grid's `<that>_000.png`
SAMPLE = re.compile(r"_(\d{6})_(\d{2})_\d{14}(?:_\d+)?(?:_\d{3})?\.(png|jpg|webp)$")

def out_dir(layout: JobLayout) -> str:
    return str(PurePosixPath(layout.root, OUTPUT))


def segment_dir(layout: JobLayout, offset: int) -> str:
    return str(PurePosixPath(out_dir(layout), f"from-{offset:08d}"))


def segments(layout: JobLayout) -> list[tuple[int, Path]]:
    """Each run's own output folder with the cumulative step it started at, oldest first."""
    root = Path(out_dir(layout))
    found = [(int(m.group(1)), p) for p in root.glob("from-*") if p.is_dir() and (m := SEGMENT.match(p.name))]
    return sorted(found)


def offset_of(path: str) -> int:
    """The cumulative step a file of a run folder counts from: its `from-NNNNNNNN` folder's number."""
    m = re.search(r"from-(\d{8})/", path.replace("\\", "/"))
    return int(m.group(1)) if m else 0
