"""The builtin trainer on the tiny model: it learns, resumes bit for bit, and survives damage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loraflow.trainer import checkpoint as ckpt
from loraflow.trainer.events import PREFIX, STOPPED_EXIT
from loraflow.trainer.loop import train


def events_of(capsys: pytest.CaptureFixture[str]) -> list[dict]:
    return [json.loads(line[len(PREFIX) :]) for line in capsys.readouterr().out.splitlines() if line.startswith(PREFIX)]


def test_loss_goes_down(make_config, capsys) -> None:
    cfg = make_config(steps=80, checkpoint_every=80, caption_dropout=0.0, learning_rate=2e-3, batch_size=4)
    assert train(cfg) == 0
    losses = [e["loss"] for e in events_of(capsys) if e["event"] == "progress"]
    assert len(losses) == 80
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert last < first * 0.95, (first, last)


def test_resume_is_bitwise_identical(make_config, capsys) -> None:
    straight = make_config("straight", steps=20)
    assert train(straight) == 0
    paused = make_config("paused", steps=20, stop_after_step=8)
    assert train(paused) == STOPPED_EXIT
    events = events_of(capsys)
    assert events[-1]["event"] == "stopped" and events[-1]["step"] == 8
    assert [c.step for c in ckpt.list_checkpoints(Path(paused.output_dir) / "checkpoints")] == [5, 8]
    resumed = make_config("paused", steps=20)
    assert train(resumed) == 0
    resumed_events = events_of(capsys)
    assert {"event": "resumed", "step": 8}.items() <= next(e for e in resumed_events if e["event"] == "resumed").items()
    assert next(e["step"] for e in resumed_events if e["event"] == "progress") == 9
    a = load_file(Path(straight.output_dir) / "checkpoints/step-000020/adapter.safetensors")
    b = load_file(Path(paused.output_dir) / "checkpoints/step-000020/adapter.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    fa, fb = (load_file(Path(c.output_dir) / "t.safetensors") for c in (straight, paused))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_damaged_checkpoint_is_skipped(make_config, capsys) -> None:
    cfg = make_config(steps=10, stop_after_step=10)
    assert train(cfg) == 0
    root = Path(cfg.output_dir) / "checkpoints"
    newest = root / "step-000010"
    data = (newest / "state.pt").read_bytes()
    (newest / "state.pt").write_bytes(data[: len(data) // 2])  # a copy cut short
    (root / "step-000012.partial").mkdir()  # a save interrupted mid-write
    valid, skipped = ckpt.latest_valid(root)
    assert valid is not None and valid.step == 5
    assert skipped[0].step == 10 and "bytes" in skipped[0].reason
    capsys.readouterr()
    assert train(make_config(steps=12)) == 0
    evs = events_of(capsys)
    assert any(e["event"] == "warning" and "step-000010" in e["message"] for e in evs)
    assert next(e for e in evs if e["event"] == "resumed")["step"] == 5


def test_keep_last_prunes_old_checkpoints(make_config) -> None:
    cfg = make_config(steps=20, checkpoint_every=4, keep_last=2)
    assert train(cfg) == 0
    steps = [c.step for c in ckpt.list_checkpoints(Path(cfg.output_dir) / "checkpoints")]
    assert steps == [16, 20]


def test_epochs_and_samples(make_config, capsys) -> None:
    cfg = make_config(
        steps=None,
        epochs=2,
        batch_size=4,
        sample_prompts=["lfx on the moon", "lfx"],
        sample_every=2,
        checkpoint_every=100,
    )
    assert train(cfg) == 0
    evs = events_of(capsys)
    total = next(e for e in evs if e["event"] == "phase" and e["phase"] == "training")["total"]
    assert total == 4  # 8 images / batch 4 = 2 batches per epoch, 2 epochs
    samples = [e for e in evs if e["event"] == "sample"]
    assert [s["step"] for s in samples] == [2, 2, 4, 4]
    index = json.loads((Path(cfg.output_dir) / "samples/step-000004/index.json").read_text())
    assert index[0] == {
        "file": "step-000004/00.png",
        "prompt": "lfx on the moon",
        "seed": 42,
        "step": 4,
        "width": 64,
        "height": 64,
        "guidance": 3.5,
        "steps": 2,
    }
    assert (Path(cfg.output_dir) / "samples/step-000004/01.png").stat().st_size > 100


def test_sigterm_saves_checkpoint_and_exits_resumable(make_config, tmp_path: Path) -> None:
    cfg = make_config(steps=5000, checkpoint_every=1000)
    path = tmp_path / "config.json"
    cfg.write(path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "loraflow.trainer", str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"progress"' in line and json.loads(line[len(PREFIX) :])["step"] >= 3:
            break
    proc.send_signal(signal.SIGTERM)
    rest = proc.stdout.read()
    assert proc.wait(60) == STOPPED_EXIT
    stopped = json.loads(next(ln for ln in rest.splitlines() if '"stopped"' in ln)[len(PREFIX) :])
    valid, _ = ckpt.latest_valid(Path(cfg.output_dir) / "checkpoints")
    assert valid is not None and valid.step == stopped["step"] >= 3


def test_unavailable_optimizer_falls_back_with_warning(make_config, capsys) -> None:
    assert train(make_config(steps=2, optimizer="adamw8bit", checkpoint_every=2)) == 0
    assert any(e["event"] == "warning" and "adamw8bit" in e["message"] for e in events_of(capsys))


def test_oom_reported_with_hint(tmp_path: Path) -> None:
    from loraflow.trainer.__main__ import oom_hint

    assert "vram_preset" in oom_hint("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2 GiB")
    bad = tmp_path / "c.json"
    bad.write_text("{}")
    out = subprocess.run([sys.executable, "-m", "loraflow.trainer", str(bad)], capture_output=True, text=True)
    assert out.returncode == 1
    lines = [json.loads(ln[len(PREFIX) :]) for ln in out.stdout.splitlines() if ln.startswith(PREFIX)]
    err = next(e for e in lines if e["event"] != "phase")  # after the "starting" line
    assert err["event"] == "error" and err["code"] == "crash" and "validation error" in err["message"]


def test_samples_default_to_dataset_captions(make_config, capsys) -> None:
    cfg = make_config(steps=2, sample_prompts=[], checkpoint_every=2)
    assert train(cfg) == 0
    prompts = [e["prompt"] for e in events_of(capsys) if e["event"] == "sample"]
    assert len(prompts) == 2 and all(p.startswith("lfx, a red round mascot") for p in prompts)
