"""Checkpoints: everything needed to continue bit for bit, written atomically, verified on read.

A checkpoint is a folder `checkpoints/step-NNNNNN/` holding the trainable LoRA tensors in fp32, the
optimizer, scheduler, every RNG state and the data position, plus the exported LoRA file so any
checkpoint can be published. It is written under a `.partial` name and renamed into place, and its
`meta.json` (written last) lists each file's size and sha256, so a folder cut short by a kill or a
bad copy is detected and skipped instead of crashing the resume. Every file and the folder are fsynced
before the rename, and the parent folder after it, so a power loss (not just a kill) never leaves a
checkpoint that looks whole and is not: a checkpoint counts as saved only once it is on the disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

NAME = re.compile(r"^step-(\d{6,})$")
META = "meta.json"


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    valid: bool
    reason: str = ""

    @property
    def lora(self) -> Path:
        return self.path / "lora.safetensors"


def _sha256(path: Path) -> str:
    from loraflow.files import file_meta

    return file_meta(path)["sha256"]


def verify(folder: Path) -> tuple[bool, str]:
    meta_path = folder / META
    if not meta_path.is_file():
        return False, "meta.json missing (the save was interrupted)"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        return False, f"meta.json unreadable ({exc})"
    for name, info in meta.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return False, f"{name} missing"
        if path.stat().st_size != info["size"]:
            return False, f"{name} is {path.stat().st_size} bytes, expected {info['size']}"
        if _sha256(path) != info["sha256"]:
            return False, f"{name} does not match its checksum"
    return True, ""


def list_checkpoints(root: Path, check: bool = True) -> list[CheckpointInfo]:
    """Every checkpoint folder under root, oldest first, each marked valid or not (with why)."""
    out: list[CheckpointInfo] = []
    if not root.is_dir():
        return out
    for folder in root.iterdir():
        match = NAME.match(folder.name)
        if match and folder.is_dir():
            valid, reason = verify(folder) if check else (True, "")
            out.append(CheckpointInfo(int(match.group(1)), folder, valid, reason))
    return sorted(out, key=lambda c: c.step)


def latest_valid(root: Path) -> tuple[CheckpointInfo | None, list[CheckpointInfo]]:
    """The newest checkpoint that verifies, and the newer ones that were skipped as damaged."""
    skipped: list[CheckpointInfo] = []
    for ckpt in reversed(list_checkpoints(root)):
        if ckpt.valid:
            return ckpt, skipped
        skipped.append(ckpt)
    return None, skipped


def save_checkpoint(
    root: Path,
    step: int,
    adapter: dict[str, torch.Tensor],
    state: dict[str, Any],
    lora: dict[str, torch.Tensor],
    lora_metadata: dict[str, str],
    keep_last: int,
) -> Path:
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().float().contiguous() for k, v in adapter.items()}, tmp / "adapter.safetensors")
    torch.save(state, tmp / "state.pt")
    save_file(lora, tmp / "lora.safetensors", metadata=lora_metadata)
    files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
    (tmp / META).write_text(json.dumps({"step": step, "files": files}, indent=2) + "\n")
    for path in tmp.iterdir():
        fsync_path(path)
    fsync_path(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)
    fsync_path(root)  # the rename itself is durable
    prune(root, keep_last)
    return final


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(root: Path, keep_last: int) -> list[Path]:
    removed: list[Path] = []
    ckpts = [c for c in list_checkpoints(root, check=False)]
    for ckpt in ckpts[: max(0, len(ckpts) - keep_last)]:
        shutil.rmtree(ckpt.path, ignore_errors=True)
        removed.append(ckpt.path)
    return removed


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    adapter = load_file(folder / "adapter.safetensors")
    state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
    return adapter, state
