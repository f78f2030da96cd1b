"""Each step's loss is read from the bar line that carries it, in the order the real engines call tqdm.

sd-scripts (train_network.py at 48d368fa) and musubi-tuner (trainer_base.py at 30c658c4) call
`progress_bar.update(1)`, then sample and save, then `progress_bar.set_postfix(avr_loss=...)`; ai-toolkit
(BaseSDTrainProcess at 27a03a91) calls `set_postfix_str(...)` and then `update(...)`. tqdm redraws on
`update()` only once its 0.1 s `mininterval` has passed since the last redraw, and on every `set_postfix`.
The consoles below are printed by tqdm itself, driven in those orders with a clock that moves by the step
time (no sleeping): on a real GPU (seconds a step) and on a fast machine (a few ms a step).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from unittest import mock

import pytest
from tqdm import tqdm

from loraflow.engines.aitoolkit_parser import AitkParser
from loraflow.engines.kohya_parser import KohyaParser
from loraflow.engines.musubi_parser import MusubiParser


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def kohya_console(step_s: float, losses: list[float], saves: tuple[int, ...] = (), end: int | None = None) -> bytes:
    """What sd-scripts prints for these per-step losses (avr_loss: their running mean); `end` cuts the run
    off right after that step's update() (a kill before its set_postfix)."""
    clock, out = Clock(), io.StringIO()
    with mock.patch("tqdm.std.time", clock):
        bar = tqdm(range(len(losses)), smoothing=0, desc="steps", file=out)  # sd-scripts' own arguments
        for step, _ in enumerate(losses, 1):
            clock.now += step_s
            bar.update(1)
            if step == end:
                return out.getvalue().encode()
            if step in saves:
                out.write(f"\nsaving checkpoint: /o/lora-step{step:08d}.safetensors\n")
            done = losses[:step]
            bar.set_postfix(avr_loss=sum(done) / len(done))
        bar.close()
    return out.getvalue().encode()


def expected_avr(losses: list[float]) -> list[float]:
    """The avr_loss each step shows, as tqdm formats it (3 significant digits)."""
    return [float(f"{sum(losses[:i]) / i:.3g}") for i in range(1, len(losses) + 1)]


def parse(parser: KohyaParser | MusubiParser | AitkParser, data: bytes, chunk: int = 10_000) -> list:
    out = []
    for i in range(0, len(data), chunk):
        out += parser.feed(data[i : i + chunk])
    return out + parser.flush()


LOSSES = [0.5, 0.3, 0.4, 0.1, 0.2, 0.35]


@pytest.mark.parametrize("step_s", [2.0, 0.15, 0.01])
@pytest.mark.parametrize("make", [KohyaParser, MusubiParser])
@pytest.mark.parametrize("chunk", [1, 10_000])
def test_kohya_family_step_gets_its_own_loss(step_s: float, make: type, chunk: int) -> None:
    """On a real GPU every step prints twice: update() with the previous step's avr_loss (step 1 with none),
    then set_postfix() with its own. The step is given the loss of its last line."""
    data = kohya_console(step_s, LOSSES, saves=(3,))
    if step_s > 0.1:  # the case the engines' order creates: the first line of step 2 shows step 1's loss
        assert b"2/6 [" in data and data.count(b" 2/6 [") == 2
    events = parse(make(), data, chunk)
    progress = [e.data for e in events if e.type == "progress"]
    assert [p["step"] for p in progress] == list(range(1, 7))
    assert [p["loss"] for p in progress] == expected_avr(LOSSES)
    assert all(p["total"] == 6 for p in progress)
    assert not [e for e in events if e.type == "error"]


@pytest.mark.parametrize("step_s", [2.0, 0.01])
def test_kohya_first_nan_step_has_no_loss(step_s: float) -> None:
    """The step whose avr_loss turns NaN is that step, not the one after; its loss is not a number."""
    losses = [0.5, 0.4, math.nan, 0.3]
    events = parse(KohyaParser(), kohya_console(step_s, losses))
    progress = {e.data["step"]: e.data for e in events if e.type == "progress"}
    assert sorted(progress) == [1, 2, 3, 4]
    assert progress[2]["loss"] == float(f"{0.45:.3g}")
    assert "loss" not in progress[3] and "loss" not in progress[4]
    errors = [e.data for e in events if e.type == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "nan_loss" and "at step 3" in errors[0]["message"]


@pytest.mark.parametrize("make", [KohyaParser, MusubiParser])
def test_bar_line_redrawn_alone_still_counts_the_step(make: type) -> None:
    """Killed between update() and set_postfix(): the last step's line carries the previous step's loss.
    The step is reported with its total; its loss is left unknown rather than given the wrong one."""
    events = parse(make(), kohya_console(2.0, LOSSES, end=4))
    progress = [e.data for e in events if e.type == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4]
    assert progress[-1]["total"] == 6 and "loss" not in progress[-1]
    assert [p["loss"] for p in progress[:3]] == expected_avr(LOSSES)[:3]


def test_kohya_step_one_alone_has_no_loss() -> None:
    """Step 1 killed before its set_postfix: its only line has no avr_loss at all."""
    events = parse(KohyaParser(), kohya_console(2.0, LOSSES, end=1))
    assert [(e.type, e.data.get("step"), "loss" in e.data) for e in events] == [("progress", 1, False)]


def aitk_console(step_s: float, losses: list[float | None], name: str = "job") -> bytes:
    """What ai-toolkit's loop prints: set_postfix_str with the step's loss, then update to the steps done;
    None is a step that ran out of memory (its banner, no postfix, the bar still moved)."""
    clock, out = Clock(), io.StringIO()
    with mock.patch("tqdm.std.time", clock):
        bar = tqdm(total=len(losses), desc=name, leave=True, initial=0, smoothing=0.7, file=out)
        for step, loss in enumerate(losses):
            clock.now += step_s
            if loss is None:
                out.write("\n################################################\n")
                out.write("# OOM during training step, skipping batch 1/3 #\n")
            else:
                bar.set_postfix_str(f"lr: 1.0e-04 loss: {loss:.3e}")
            bar.update(step + 1 - bar.n)
        bar.close()
    return out.getvalue().encode()


@pytest.mark.parametrize("step_s", [2.0, 0.01])
def test_aitoolkit_step_without_a_loss_line_is_still_counted(step_s: float) -> None:
    """A step that ran out of memory sets no postfix but the bar moves on: the step is reported with its
    total and no loss (not the previous step's, and not dropped)."""
    losses: list[float | None] = [None, 0.5, 0.4, None, 0.3]
    events = parse(AitkParser("job"), aitk_console(step_s, losses))
    progress = {e.data["step"]: e.data for e in events if e.type == "progress"}
    assert all(p["total"] == 5 for p in progress.values())
    losses_shown = {step: p.get("loss") for step, p in progress.items()}
    if step_s > 0.1:  # every update() redraws: every step has its line
        assert losses_shown == {1: None, 2: 0.5, 3: 0.4, 4: None, 5: 0.3}
    else:  # update() never redraws: a step shows when the next one sets its loss (none after an OOM step)
        assert losses_shown == {1: None, 2: 0.5, 4: None, 5: 0.3}


def standin_bar(tmp_path: Path, capfd: pytest.CaptureFixture[str], images: int, *args: str) -> bytes:
    """The kohya stand-in's `steps:` bar (stderr) for a run on `images` tiny images."""
    from PIL import Image

    from loraflow.testing.kohya_standin import run

    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(images):
        Image.new("RGB", (32, 32)).save(folder / f"{i}.png")
    config = tmp_path / "dataset.toml"
    config.write_text(f'[[datasets]]\n[[datasets.subsets]]\nimage_dir = "{folder}"\n')
    argv = ["--output_dir", str(tmp_path / "out"), "--output_name", "m", "--dataset_config", str(config)]
    assert run([*argv, "--network_dim", "4", "--network_alpha", "4", "--console_log_simple", *args]) == 0
    return capfd.readouterr().err.encode()


def test_kohya_standin_at_a_real_gpu_pace(tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch) -> None:
    """The stand-in calls tqdm in sd-scripts' order; at 0.15 s a step (slower than the 0.1 s redraw) every step
    prints the previous step's avr_loss first, and the parser still gives each step its own."""
    from loraflow.testing.kohya_standin import avr_loss, loss_at

    monkeypatch.setenv("KOHYA_STANDIN_STEP_S", "0.15")
    bar = standin_bar(tmp_path, capfd, 2, "--max_train_steps", "4")
    assert bar.count(b" 2/4 [") == 2  # update() and set_postfix() both redrew step 2
    progress = [e.data for e in parse(KohyaParser(), bar) if e.type == "progress"]
    losses = [loss_at(step, 4) for step in range(1, 5)]
    expected = [float(f"{avr_loss(losses[:step], 2):.3g}") for step in range(1, 5)]
    assert [(p["step"], p["loss"]) for p in progress] == list(zip(range(1, 5), expected, strict=True))


def test_kohya_standin_with_accumulation_reports_each_step_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """With gradient accumulation sd-scripts redraws the postfix for every micro-batch, at the old count: each
    optimizer step is still reported once, in order, with a loss (avr_loss is a moving average over micro-batches)."""
    monkeypatch.setenv("KOHYA_STANDIN_STEP_S", "0.15")
    bar = standin_bar(tmp_path, capfd, 4, "--max_train_steps", "4", "--gradient_accumulation_steps", "2")
    assert bar.count(b" 1/4 [") >= 3  # update(), set_postfix(), the next step's first micro-batch
    parser = KohyaParser()
    parser.feed("  gradient accumulation steps / 勾配を合計するステップ数 = 2\n".encode())
    progress = [e.data for e in parse(parser, bar) if e.type == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4]
    assert all(p["total"] == 4 and isinstance(p["loss"], float) for p in progress)


def test_aitoolkit_standin_at_a_real_gpu_pace(tmp_path: Path, capfd: pytest.CaptureFixture[str], monkeypatch) -> None:
    """The ai-toolkit stand-in sets the loss and then moves the count (its loop's order); at 0.15 s a step both
    redraw, and each step still gets its own loss."""
    from loraflow.testing.aitoolkit_standin import loss_at, run
    from tests.engines.test_engine_runs import aitk_standin_config

    config = aitk_standin_config(tmp_path, 4)[2]
    monkeypatch.setenv("AITK_STANDIN_STEP_S", "0.15")
    assert run(str(config)) == 0
    bar = capfd.readouterr().err.encode()
    assert bar.count(b"| 1/4 [") == 2  # set_postfix_str() for step 2 at the old count, then update()
    progress = [e.data for e in parse(AitkParser("mascot"), bar) if e.type == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4]
    assert [f"{p['loss']:.3e}" for p in progress] == [f"{loss_at(step - 1, 4):.3e}" for step in range(1, 5)]
