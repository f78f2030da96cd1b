"""The builtin trainer stops at the first NaN/inf loss with the `nan_loss` code, before saving it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraflow.trainer import loop


def test_nan_loss_stops_the_run(
    make_config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real, calls = loop.flow_loss, []

    def poisoned(*args, **kwargs) -> torch.Tensor:
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) > 6 else loss  # step 7 (one micro-batch a step)

    monkeypatch.setattr(loop, "flow_loss", poisoned)
    cfg = make_config(steps=20, checkpoint_every=5)
    assert loop.train(cfg) == 1
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line[len("LORAFLOW ") :]) for line in lines if line.startswith("LORAFLOW ")]
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "nan_loss" and "at step 7" in errors[0]["message"]
    assert "learning_rate" in errors[0]["hint"]
    assert max(e["step"] for e in events if e["event"] == "progress") == 6
    saved = sorted(p.name for p in (Path(cfg.output_dir) / "checkpoints").iterdir())
    assert saved == ["step-000005"]  # nothing poisoned was saved
    assert not (Path(cfg.output_dir) / "t.safetensors").exists()
