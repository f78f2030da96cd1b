"""A pause asked for while training runs (the notebook's STOP_AFTER_STEP) lands on exactly that step."""

from __future__ import annotations

import json
from pathlib import Path

from loraflow.trainer import checkpoint as ckpt
from loraflow.trainer.events import PAUSE_FILE, PREFIX, STOPPED_EXIT
from loraflow.trainer.loop import train


def test_a_pause_file_stops_at_its_step_once(make_config, capsys) -> None:
    cfg = make_config(steps=12)
    request = Path(cfg.output_dir) / PAUSE_FILE
    request.parent.mkdir(parents=True)
    request.write_text("7\n")
    assert train(cfg) == STOPPED_EXIT
    events = [json.loads(x[len(PREFIX) :]) for x in capsys.readouterr().out.splitlines() if x.startswith(PREFIX)]
    assert events[-1]["event"] == "stopped" and events[-1]["step"] == 7
    assert ckpt.list_checkpoints(Path(cfg.output_dir) / "checkpoints")[-1].step == 7
    assert not request.exists()  # honoured once: the resume below runs to the end
    assert train(make_config(steps=12)) == 0
