"""kohya resume stays cumulative: resumed at step 40 of 100 with 30 batches an epoch, the run ends at 100
and every checkpoint is named by the cumulative step. The stand-in does sd-scripts' own resume arithmetic
(48d368fa), so the old arguments reproduce the bug the issue reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

from loraflow.engines.kohya import KohyaEngine
from loraflow.engines.kohya_files import PROMPTS, SCRIPT
from loraflow.engines.kohya_parser import KohyaParser
from loraflow.layout import JobLayout
from loraflow.monitor import events as ev
from loraflow.spec import parse_spec
from loraflow.testing import kohya_standin


def setup_job(tmp_path: Path, accumulation: int = 1, length: dict | None = None):
    spec = parse_spec(
        {
            "name": "mascot",
            "dataset": {"path": str(tmp_path), "repeats": 3},
            "base_model": "flux-dev",
            "engine": "kohya",
            "training": {
                **(length or {"steps": 100}),
                "resolution": [512],
                "batch_size": 1,
                "gradient_accumulation": accumulation,
            },
            "sampling": {"every_n_steps": 0, "at_end": False},
            "checkpointing": {"every_n_steps": 20, "keep_last": 10},
        }
    )
    layout = JobLayout(str(tmp_path / "job"))
    Path(layout.dataset).mkdir(parents=True)
    for i in range(10):  # 10 images x 3 repeats, batch 1: 30 batches an epoch
        Image.new("RGB", (64, 64), (i * 20, 0, 0)).save(Path(layout.dataset) / f"{i}.png")
    Path(layout.engine).mkdir(parents=True)
    for name, text in KohyaEngine().render(spec, layout, "j", "x").items():
        if name not in (SCRIPT, PROMPTS):
            (Path(layout.engine) / name).write_text(text)
    return spec, layout


def run_standin(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list:
    script = next(i for i, a in enumerate(argv) if a.endswith("flux_train_network.py"))
    assert kohya_standin.run(argv[script + 1 :]) == 0
    out = capsys.readouterr()
    parser = KohyaParser()  # stdout (summary, skipping, saves) before stderr (the bar), as kohya orders them
    return parser.feed(out.out.encode()) + parser.feed(out.err.encode()) + parser.flush()


def first_run_killed_after_40(spec, layout, capsys, monkeypatch) -> None:
    """The first run, killed right after its step-40 save: only steps 20 and 40 and their states remain."""
    argv = KohyaEngine().command(spec, layout, "python3").argv
    monkeypatch.setenv("KOHYA_STANDIN_OOM_AT", "41")
    script = next(i for i, a in enumerate(argv) if a.endswith("flux_train_network.py"))
    assert kohya_standin.run(argv[script + 1 :]) == 1
    capsys.readouterr()
    monkeypatch.delenv("KOHYA_STANDIN_OOM_AT")
    out = Path(layout.root) / "kohya"
    assert sorted(p.name for p in out.glob("mascot-step*.safetensors")) == [
        "mascot-step00000020.safetensors",
        "mascot-step00000040.safetensors",
    ]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_resume_at_40_of_100_ends_at_100_with_cumulative_names(
    accumulation: int, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, layout = setup_job(tmp_path, accumulation)
    first_run_killed_after_40(spec, layout, capsys, monkeypatch)
    engine = KohyaEngine()
    assert engine.prepare_resume(spec, layout)[-1] == "resuming from mascot-step00000040-state at step 40"
    events = run_standin(engine.command(spec, layout, "python3").argv, capsys)
    progress = [e.data for e in events if e.type == ev.PROGRESS]
    assert progress[0]["step"] == 41 and progress[-1]["step"] == 100
    assert {p["total"] for p in progress} == {100}
    assert [e.data["step"] for e in events if e.type == ev.RESUMED] == [40]
    saved = [e.data["step"] for e in events if e.type == ev.CHECKPOINT]
    assert saved == [60, 80, 100]  # no name reused from before the resume
    files = {int(p.stem[-8:]): p for p in (Path(layout.root) / "kohya").glob("mascot-step*.safetensors")}
    assert sorted(files) == [20, 40, 60, 80, 100]
    for step, path in files.items():
        with safe_open(str(path), "pt") as f:
            assert f.metadata()["ss_steps"] == str(step)  # 20 and 40 are still the first run's files
    with safe_open(str(Path(layout.root) / "kohya" / "mascot.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == "100"
    state = json.loads((Path(layout.root) / "kohya" / "mascot-step00000100-state" / "train_state.json").read_text())
    assert state["current_step"] == 100  # so a second resume starts from the right step too


def test_old_arguments_reproduce_kohyas_run_local_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What loraflow passed before: kohya restarts at 40 mod 30 = 10 and trains to the end of epoch 4."""
    spec, layout = setup_job(tmp_path)
    first_run_killed_after_40(spec, layout, capsys, monkeypatch)
    argv = KohyaEngine().command(spec, layout, "python3").argv
    argv[argv.index("--dataset_config") + 1] = str(Path(layout.engine) / "dataset.toml")
    events = run_standin(argv, capsys)
    saved = [e.data["step"] for e in events if e.type == ev.CHECKPOINT]
    progress = [e.data for e in events if e.type == ev.PROGRESS]
    assert saved == [20, 40, 60, 80] and progress[-1]["step"] == 120 and progress[-1]["total"] == 130


def test_resume_by_epochs_keeps_the_runs_own_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """training.epochs: 4 epochs of 30 steps; the resumed view is longer, so it gets --max_train_steps 120."""
    spec, layout = setup_job(tmp_path, length={"steps": None, "epochs": 4})
    first_run_killed_after_40(spec, layout, capsys, monkeypatch)
    argv = KohyaEngine().command(spec, layout, "python3").argv
    assert "--max_train_epochs" not in argv and argv[argv.index("--max_train_steps") + 1] == "120"
    events = run_standin(argv, capsys)
    assert [e.data["step"] for e in events if e.type == ev.CHECKPOINT] == [60, 80, 100, 120]
    assert [e.data for e in events if e.type == ev.PROGRESS][-1]["step"] == 120


def test_the_view_is_only_as_long_as_the_run_needs(tmp_path: Path) -> None:
    import tomllib

    spec, layout = setup_job(tmp_path, accumulation=2)
    (Path(layout.dataset) / "manifest.json").write_text(json.dumps({"count": 10}))
    view = tomllib.loads(KohyaEngine().render(spec, layout, "j", "x")["dataset_resume.toml"])
    # 100 steps x 2 micro-batches x batch 1 over 10 images x 3 repeats: 7 x the repeats (one 210-batch epoch)
    assert view["datasets"][0]["subsets"][0]["num_repeats"] == 3 * 7


def test_resume_off_the_accumulation_never_reuses_a_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accumulation 3 does not divide 40: kohya is told 14 (x 3 = 42), so 40 is never saved again."""
    spec, layout = setup_job(tmp_path, accumulation=3)
    first_run_killed_after_40(spec, layout, capsys, monkeypatch)
    argv = KohyaEngine().command(spec, layout, "python3").argv
    assert argv[-2:] == ["--initial_step", "14"]
    events = run_standin(argv, capsys)
    assert [e.data["step"] for e in events if e.type == ev.RESUMED] == [42]
    assert [e.data["step"] for e in events if e.type == ev.CHECKPOINT] == [60, 80, 100]
    assert [e.data for e in events if e.type == ev.PROGRESS][-1]["step"] == 100
