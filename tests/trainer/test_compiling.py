"""training.compile: compiled where the H200 bench measured it faster, the same math when compiled, refused
by name on engines loraflow does not compile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from loraflow.engines.builtin import trainer_config
from loraflow.layout import JobLayout
from loraflow.trainer import compiling
from loraflow.trainer.compiling import decide
from loraflow.trainer.loop import train
from tests.engines.test_field_map import refused, spec
from tests.trainer.test_loss_curve import FIXTURE, RUN
from tests.trainer.test_trainer import events_of


@pytest.mark.parametrize(
    ("mode", "device", "checkpointing", "quantize", "expected"),
    [
        ("auto", "cuda", False, "none", True),  # the measured configuration (bench/README.md)
        ("auto", "cuda", True, "none", False),  # not measured compiled
        ("auto", "cuda", False, "fp8", False),
        ("auto", "cpu", False, "none", False),  # the tiny model's numbers stay put
        ("auto", "mps", False, "none", False),
        ("on", "cpu", True, "nf4", True),
        ("off", "cuda", False, "none", False),
    ],
)
def test_auto_compiles_where_it_was_measured_faster(
    mode: str, device: str, checkpointing: bool, quantize: str, expected: bool
) -> None:
    compiled, why = decide(mode, device, checkpointing, quantize)  # type: ignore[arg-type]
    assert compiled is expected
    assert why.startswith(f"compile: {'on' if expected else 'off'} (")


def test_compiled_blocks_train_the_pinned_loss_curve(make_config, capsys, monkeypatch) -> None:
    """The same graph capture inductor compiles (aot_eager: no C compiler), on the real train(): the tiny model's
    pinned curve is unchanged, and the blocks really went through dynamo."""
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        assert train(make_config(**RUN, compile="on")) == 0
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    finally:
        torch._dynamo.reset()
    events = events_of(capsys)
    log = next(e for e in events if e["event"] == "log" and "compiled" in e)
    assert log["compiled"] is True and log["message"] == "compile: on (training.compile: on)"
    assert graphs >= 2  # a double and a single block at least
    losses = [e["loss"] for e in events if e["event"] == "progress"]
    assert losses == pytest.approx(json.loads(FIXTURE.read_text())["losses"], rel=1e-4, abs=1e-6)


def test_the_spec_field_reaches_the_trainer_and_other_engines_refuse_on() -> None:
    cfg = trainer_config(spec("builtin", training={"compile": "off"}), JobLayout("/work/jobs/abc"), "j", "x")
    assert cfg.compile == "off"
    assert trainer_config(spec("builtin"), JobLayout("/work/jobs/abc"), "j", "x").compile == "auto"
    for engine in ("kohya", "ai-toolkit"):
        problems = refused(engine, training={"compile": "on"})
        assert any(p.startswith(f"training.compile: engine {engine} cannot honour") for p in problems), problems
        spec(engine, training={"compile": "auto"})  # the default is accepted everywhere


def test_compile_on_refused_by_the_hosted_engine(tmp_path: Path) -> None:
    problems = refused("fal", training={"compile": "on"}, compute={"provider": "local"})
    assert any("training.compile" in p for p in problems), problems
