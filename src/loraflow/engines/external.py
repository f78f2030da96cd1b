"""What the ai-toolkit and kohya adapters share: where the engine is installed, its pinned set-up
script, safetensors header checks, and copying outputs into loraflow's standard job layout."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraflow import paths
from loraflow.engines.base import Outcome
from loraflow.files import file_meta
from loraflow.layout import JobLayout
from loraflow.monitor import events as ev
from loraflow.monitor.events import EngineEvent


def min_vram_gb(spec: Any, floor: int) -> int:
    """What to rent: the user's minimum, else the VRAM preset, else the model's need (at least `floor`)."""
    return spec.compute.gpu.min_vram_gb or spec.training.vram_preset or max(spec.catalog_entry.min_vram_gb, floor)


def engine_dir(name: str, options: dict[str, Any]) -> Path:
    """The engine's checkout: `engine.options.path`, LORAFLOW_<NAME>_DIR, or LORAFLOW_HOME/engines/<name>."""
    if options.get("path"):
        return Path(str(options["path"])).expanduser()
    env = os.environ.get(f"LORAFLOW_{name.upper().replace('-', '')}_DIR")
    return Path(env) if env else paths.home() / "engines" / name


def engine_python(root: Path, options: dict[str, Any]) -> str:
    """`engine.options.python`, else the engine's own venv (it pins libraries loraflow does not), else this
    Python (an image such as ostris/aitoolkit installs the engine's requirements system-wide)."""
    if options.get("python"):
        return str(options["python"])
    venv = root / "venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def setup_script(repo: str, pin: str, requirements: str | None, extra: str = "") -> str:
    """An idempotent bash script that installs the engine at its pin into its own venv (`requirements`: its
    requirements file; None for an engine installed as a package by `extra`)."""
    install = f"venv/bin/pip install --quiet -r {requirements}\n" if requirements else ""
    return f"""#!/usr/bin/env bash
# Installs {repo} at {pin} into DEST (default: $LORAFLOW_HOME/engines) with its own venv. Safe to re-run.
set -euo pipefail
DEST="${{1:-${{LORAFLOW_HOME:-$HOME/.loraflow}}/engines/{repo.split("/")[-1]}}}"
if [ -f "$DEST/.loraflow-installed-{pin}" ]; then echo "already installed at $DEST"; exit 0; fi
[ -d "$DEST/.git" ] || git clone https://github.com/{repo} "$DEST"
cd "$DEST"
git fetch --quiet origin && git checkout --quiet {pin}
git submodule update --init --recursive --quiet
[ -x venv/bin/python ] || python3 -m venv venv
venv/bin/pip install --quiet --upgrade pip
{extra}{install}touch ".loraflow-installed-{pin}"
echo "installed {repo}@{pin} at $DEST"
"""


def dataset_count(layout: JobLayout) -> int | None:
    """How many images the prepared dataset holds (its manifest), or None before it is prepared."""
    manifest = Path(layout.dataset) / "manifest.json"
    if not manifest.exists():
        return None
    return int(json.loads(manifest.read_text(encoding="utf-8"))["count"])


def safetensors_header(path: Path) -> dict[str, Any] | None:
    """The parsed header of a safetensors file, or None when the file is cut short or not safetensors."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                return None
            n = struct.unpack("<Q", raw)[0]
            if n <= 0 or 8 + n > size:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError):
        return None
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        return None  # the tensors the header promises are not all there
    return header


def store_checkpoint(layout_checkpoints: str, step: int, lora: Path, extra: dict[str, Path] | None = None) -> Path:
    """Copy an engine's checkpoint into checkpoints/step-NNNNNN/ (lora.safetensors + meta.json written last)."""
    final = Path(layout_checkpoints) / f"step-{step:06d}"
    if (final / "meta.json").exists():
        return final
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copyfile(lora, tmp / "lora.safetensors")
    for name, src in (extra or {}).items():
        if src.is_dir():
            shutil.copytree(src, tmp / name)
        elif src.exists():
            shutil.copyfile(src, tmp / name)
    files = {p.name: file_meta(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / "meta.json").write_text(json.dumps({"step": step, "files": files}, indent=2) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.replace(final)
    return final


def store_samples(
    samples_root: str, step: int, images: list[tuple[int, Path]], prompts: list[str], spec_sampling: Any
) -> list[dict[str, Any]]:
    """Copy one sample round into samples/step-NNNNNN/ with the index.json the bundle reads."""
    folder = Path(samples_root) / f"step-{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for i, src in sorted(images):
        name = f"{i:02d}{src.suffix.lower()}"
        if not (folder / name).exists():
            shutil.copyfile(src, folder / name)
        index.append(
            {
                "file": f"step-{step:06d}/{name}",
                "prompt": prompts[i] if i < len(prompts) else "",
                "seed": spec_sampling.seed + i,
                "step": step,
                "width": spec_sampling.width,
                "height": spec_sampling.height,
                "guidance": spec_sampling.guidance_scale,
                "steps": spec_sampling.steps,
            }
        )
    (folder / "index.json").write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    return index


def sync_checkpoints(checkpoints_dir: str, found: list[tuple[int, Path, dict[str, Path]]]) -> list[EngineEvent]:
    """Copy each good engine checkpoint not yet in checkpoints/ (with its extra files); one event each."""
    events = []
    for step, lora, extra in found:
        if not (Path(checkpoints_dir) / f"step-{step:06d}" / "meta.json").exists():
            store_checkpoint(checkpoints_dir, step, lora, extra)
            events.append(
                EngineEvent(
                    ev.CHECKPOINT_SYNCED, {"step": step, "path": f"checkpoints/step-{step:06d}", "synced": True}
                )
            )
    return events


def sync_samples(
    samples_dir: str,
    files: list[Path],
    pattern: re.Pattern[str],
    spec: Any,
    step_of: Callable[[int], int] | None = None,
) -> list[EngineEvent]:
    """Group an engine's sample images by step (pattern groups: step, prompt index) into samples/step-N/;
    `step_of` turns the number in a file name into the steps done when the engine names them otherwise."""
    rounds: dict[int, dict[int, Path]] = {}
    for path in sorted(files, key=lambda p: p.name):  # two rounds of one step (ai-toolkit's last): the later
        m = pattern.search(path.name)
        if m:
            step = int(m.group(1))
            rounds.setdefault(step_of(step) if step_of else step, {})[int(m.group(2))] = path
    prompts = [spec.substitute_trigger(p) for p in spec.sampling.prompts]
    events = []
    for step, images in sorted(rounds.items()):
        if (Path(samples_dir) / f"step-{step:06d}" / "index.json").exists():
            continue
        for item in store_samples(samples_dir, step, sorted(images.items()), prompts, spec.sampling):
            events.append(
                EngineEvent(ev.SAMPLE, {"step": step, "path": f"samples/{item['file']}", "prompt": item["prompt"]})
            )
    return events


def finish_lora(final: Path, root: str, name: str, lora_format: str) -> str:
    """Put the engine's final LoRA where the bundle expects it, in the spec's key layout."""
    from loraflow.engines.convert import convert_file

    dest = Path(root) / f"{name}.safetensors"
    convert_file(final, dest, lora_format)
    return str(dest)


def outcome_for(label: str, exit_code: int | None, final_exists: bool, stopped: bool = False) -> Outcome:
    """Done means exit code 0 *and* the final file: never the mere absence of an error."""
    if exit_code == 0 and final_exists:
        return Outcome(True, False, None, "training finished")
    if stopped:
        return Outcome(False, True, None, f"{label} stopped; it resumes from its last save")
    if exit_code == 0:
        return Outcome(False, False, None, f"{label} exited 0 without writing its final LoRA")
    if exit_code is None:
        return Outcome(False, False, None, f"{label} disappeared without an exit code")
    return Outcome(False, False, None, f"{label} exited with code {exit_code}")
