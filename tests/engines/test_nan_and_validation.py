"""A NaN loss is a failure with its code on every engine; kohya's validation bars are not training
progress. Fixtures are in the engines' own formats (tests/engines/fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loraflow.engines.aitoolkit import AitkEngine
from loraflow.engines.aitoolkit_parser import AitkParser
from loraflow.engines.kohya import KohyaEngine
from loraflow.engines.kohya_parser import KohyaParser
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.monitor import events as ev
from tests.conftest import EXAMPLES

FIX = Path(__file__).parent / "fixtures"


def feed(parser, name: str, chunk: int) -> list:
    data = (FIX / name).read_bytes()
    out = []
    for i in range(0, len(data), chunk):
        out += parser.feed(data[i : i + chunk])
    return out + parser.flush()


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_kohya_nan_and_validation_bars(chunk: int) -> None:
    parser = KohyaParser()
    events = feed(parser, "kohya_nan.log", chunk)
    progress = [e.data for e in events if e.type == ev.PROGRESS]
    assert [p["step"] for p in progress] == [1, 2, 3, 4, 5]  # no `validation steps:` bar among them
    assert {p["total"] for p in progress} == {100}
    assert [p.get("loss") for p in progress] == [0.412, 0.409, None, None, None]  # nan is no loss value
    errors = [e.data for e in events if e.type == ev.ERROR]
    assert len(errors) == 1 and errors[0]["code"] == "nan_loss" and "avr_loss=nan at step 3" in errors[0]["message"]
    assert "learning_rate" in errors[0]["hint"] and "fp32" in errors[0]["hint"]
    outcome = KohyaEngine().outcome(0, True, parser)  # kohya trains on and exits 0: still a failure
    assert not outcome.ok and not outcome.stopped and "NaN" in outcome.message


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_aitoolkit_loss_is_nan(chunk: int) -> None:
    parser = AitkParser("my_first_flux_lora_v1")
    events = feed(parser, "aitk_nan.log", chunk)
    errors = [e.data for e in events if e.type == ev.ERROR]
    assert [e["code"] for e in errors] == ["nan_loss"]
    losses = {e.data["step"]: e.data.get("loss") for e in events if e.type == ev.PROGRESS}
    # ai-toolkit's own order (27a03a91): the loss redrawn at the old count, then the count moves; after
    # `loss is nan` the bar shows the 0.0 ai-toolkit put in its place, which is no loss value
    assert losses == {1: 0.4101, 2: 0.4032, 3: None, 4: None}
    assert not AitkEngine().outcome(0, True, parser).ok
    other = AitkParser("x")
    other.feed(b"Prior loss is nan\n")  # regularisation images only: not the training loss
    assert not other.nan_loss


def test_kohya_nan_run_fails_with_its_code(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "kohya"
    root.mkdir()
    (root / "flux_train_network.py").write_text("from loraflow.testing.kohya_standin import main\nmain()\n")
    monkeypatch.setenv("KOHYA_STANDIN_NAN_AT", "5")
    spec = {
        "name": "mascot",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "flux-dev",
        "engine": {"name": "kohya", "options": {"path": str(root)}},
        "training": {"steps": 12, "resolution": [512]},
        "sampling": {"every_n_steps": 0, "at_end": False},
        "checkpointing": {"every_n_steps": 10},
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli("train", path)
    assert result.code == 1, result.out + result.err
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.FAILED
    assert "avr_loss=nan at step 5" in (job.error or "")
    errors = [e.data for e in store.events(job.id, types=["error"])]
    assert errors and errors[0]["code"] == "nan_loss"
    assert not store.events(job.id, types=["restart"])  # the same rate would fail the same way
