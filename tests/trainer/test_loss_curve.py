"""The tiny model's loss curve is pinned: changes that make the step GPU-bound must not change the math.

The fixture was recorded before the step was reworked (device-resident caches, device noise, deferred
loss reads); a changed random stream or a changed formula moves these numbers far beyond the tolerance,
while the tolerance absorbs last-bit differences between CPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraflow.trainer.loop import train
from tests.trainer.test_trainer import events_of

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_losses.json"
RUN = dict(steps=12, batch_size=2, gradient_accumulation=2, caption_dropout=0.3, checkpoint_every=100)


def test_tiny_loss_curve_is_unchanged(make_config, capsys) -> None:
    assert train(make_config(**RUN)) == 0
    losses = [e["loss"] for e in events_of(capsys) if e["event"] == "progress"]
    expected = json.loads(FIXTURE.read_text())["losses"]
    assert losses == pytest.approx(expected, rel=1e-4, abs=1e-6)
