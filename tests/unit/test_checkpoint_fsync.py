"""Checkpoints reach the disk before they count as saved: every file, the folder and the rename."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from loraflow.trainer import checkpoint


def test_every_file_the_folder_and_the_rename_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    root = tmp_path / "checkpoints"
    weights = {"a": torch.ones(2, 2)}
    final = checkpoint.save_checkpoint(root, 10, weights, {"step": 10}, weights, {}, keep_last=5)
    partial = root / "step-000010.partial"
    names = sorted(p.name for p in final.iterdir())
    assert {str(partial / n) for n in names} <= set(synced)  # each file's data, before the rename
    assert str(partial) in synced  # the folder's entries
    assert synced[-1] == str(root)  # the rename, after it happened
    assert checkpoint.verify(final)[0]
