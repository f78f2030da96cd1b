"""Where the kohya engine's files live and how sd-scripts names them: the pin, the rendered files,
the checkpoint, state and sample names it writes."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from loraflow.layout import JobLayout

REPO = "kohya-ss/sd-scripts"
PIN = "48d368fa"  # main, v0.10.1 (2026-02-16): Flux training merged from the sd3 branch
OUTPUT = "kohya"
DATASET = "dataset.toml"
RESUME_DATASET = "dataset_resume.toml"  # the one-epoch view a resumed run reads (see resume_args)
PROMPTS = "sample_prompts.txt"
ARGS = "args.json"
SCRIPT = "train.sh"
SETUP = "setup_sd_scripts.sh"
STEP_FILE = re.compile(r"-step(\d{8})\.safetensors$")
STATE_DIR = re.compile(r"-step(\d{8})-state$")
SAMPLE = re.compile(r"_(\d{6})_(\d{2})_\d{14}(?:_\d+)?\.(png|jpg|webp)$")


def out_dir(layout: JobLayout) -> str:
    return str(PurePosixPath(layout.root, OUTPUT))
