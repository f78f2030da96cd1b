"""Checkpoints copied off a rented host while its trainer saves and prunes under us (running/lease_files.sync)."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import torch

from loraflow.errors import LoraflowError
from loraflow.layout import JobLayout
from loraflow.running.lease_files import sync
from loraflow.trainer.checkpoint import save_checkpoint


class RacingHost:
    """A host whose trainer saves a checkpoint and prunes its oldest each time we ask for a file: the copy
    is always slower than the saving (a tiny model on a fast GPU, a slow link)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.step = 20
        for step in (10, 15, 20):
            self._save(step)

    def _save(self, step: int) -> None:
        weights = {"a": torch.full((2, 2), float(step))}
        save_checkpoint(self.root / "checkpoints", step, weights, {"step": step}, weights, {}, keep_last=5)

    def listing(self, folder: str) -> dict[str, int]:
        base = Path(folder)
        return {str(p.relative_to(base)): p.stat().st_size for p in base.rglob("*") if p.is_file()}

    def get(self, remote: str, local: Path) -> None:
        if not Path(remote).is_file():
            raise LoraflowError(f"{remote}: no such file")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(remote, local)
        self.step += 5
        self._save(self.step)  # meanwhile the trainer moved on, and keep_last dropped the oldest


class Lease:
    def __init__(self, tmp_path: Path) -> None:
        self.local = JobLayout(str(tmp_path / "here"))
        self.remote = JobLayout(str(tmp_path / "host"))
        Path(self.local.checkpoints).mkdir(parents=True)
        self._host = RacingHost(Path(self.remote.root))
        self.events: list[tuple[str, dict]] = []
        self.spec = SimpleNamespace(engine=SimpleNamespace(name="builtin"))  # its checkpoints/ are the outputs

    def host(self) -> RacingHost:
        return self._host

    def layout(self) -> JobLayout:
        return self.remote

    def emit(self, type_: str, data: dict) -> None:
        self.events.append((type_, data))


def test_a_trainer_that_saves_faster_than_we_copy_still_leaves_us_its_latest(tmp_path: Path) -> None:
    lease = Lease(tmp_path)
    events = sync(lease)  # type: ignore[arg-type]
    assert [e.data["step"] for e in events] == [20]  # oldest first, every copy lost the race to the pruning
    assert sorted(p.name for p in Path(lease.local.checkpoints).iterdir()) == ["step-000020"]
