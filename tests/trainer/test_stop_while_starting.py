"""A stop that reaches the builtin trainer while it is still starting is kept, not fatal.

On a busy machine a budget stop used to arrive while the trainer was importing torch: SIGTERM's default
action killed it at step 0 with no checkpoint. The trainer now listens first and says so with its first
line (the runner and the follower send the signal only after that line)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from loraflow.trainer import checkpoint as ckpt
from loraflow.trainer.events import PREFIX, STOPPED_EXIT


def test_sigterm_after_the_first_line_trains_one_step_and_saves_it(make_config, tmp_path: Path) -> None:
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
    first = json.loads(proc.stdout.readline()[len(PREFIX) :])
    assert first["event"] == "phase" and first["phase"] == "starting"
    proc.send_signal(signal.SIGTERM)  # before torch, the model and the cache are loaded
    rest = proc.stdout.read()
    assert proc.wait(120) == STOPPED_EXIT
    events = [json.loads(ln[len(PREFIX) :]) for ln in rest.splitlines() if ln.startswith(PREFIX)]
    assert [e["step"] for e in events if e["event"] == "stopped"] == [1]
    valid, _ = ckpt.latest_valid(Path(cfg.output_dir) / "checkpoints")
    assert valid is not None and valid.step == 1
