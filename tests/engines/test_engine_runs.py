"""ai-toolkit and kohya driven end to end through the job runner, with stand-in programs that write
exactly what the real engines write; resume traps included."""

from __future__ import annotations

import os
import signal
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from loraflow.engines.aitoolkit import AitkEngine
from loraflow.engines.kohya import KohyaEngine
from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.publish.bundle import verify_bundle
from loraflow.spec import parse_spec
from tests.conftest import EXAMPLES


@pytest.fixture
def engines_dir(tmp_path: Path) -> Path:
    root = tmp_path / "engines"
    (root / "ai-toolkit").mkdir(parents=True)
    (root / "ai-toolkit" / "run.py").write_text("from loraflow.testing.aitoolkit_standin import main\nmain()\n")
    (root / "kohya").mkdir()
    for script in ("flux_train_network.py", "sdxl_train_network.py"):
        (root / "kohya" / script).write_text("from loraflow.testing.kohya_standin import main\nmain()\n")
    return root


def write_spec(tmp_path: Path, engines_dir: Path, engine: str, steps: int = 30, **options: object) -> Path:
    spec = {
        "name": "mascot",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx"},
        "base_model": "flux-dev",
        "engine": {"name": engine, "options": {"path": str(engines_dir / engine), **options}},
        "training": {"steps": steps, "resolution": [512]},
        "sampling": {"prompts": ["[trigger] on the moon", "[trigger]"], "every_n_steps": 10},
        "checkpointing": {"every_n_steps": 10, "keep_last": 10},
    }
    path = tmp_path / f"{engine}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def wait_for(check, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.parametrize("engine", ["ai-toolkit", "kohya"])
def test_engine_job_end_to_end(engine: str, tmp_path: Path, engines_dir: Path, cli) -> None:
    result = cli("train", write_spec(tmp_path, engines_dir, engine))
    assert result.code == 0, result.out + result.err
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.COMPLETED and job.step == 30
    synced = sorted(p.name for p in (job.folder / "checkpoints").iterdir())
    # ai-toolkit saves and samples after loop index 10 and 20: the 11th and 21st steps; kohya also saves a
    # step checkpoint at the last step when it is on the cadence
    held = [11, 21] if engine == "ai-toolkit" else [10, 20, 30]
    assert synced == [f"step-{s:06d}" for s in held]
    assert sorted(p.name for p in (job.folder / "samples").iterdir()) == [
        f"step-{s:06d}" for s in sorted({*held, 30})
    ]
    lora = job.folder / "mascot.safetensors"
    with safe_open(str(lora), "pt") as f:
        keys = list(f.keys())
        assert f.metadata()["loraflow.format"] == "kohya"
    assert keys and all(k.startswith("lora_unet_") for k in keys)  # ai-toolkit's diffusers output converted
    assert verify_bundle(Path(job.outputs.bundle)) == []
    with zipfile.ZipFile(job.outputs.bundle) as zf:
        names = zf.namelist()
    rendered = "config/aitk_config.yaml" if engine == "ai-toolkit" else "config/dataset.toml"
    assert (rendered in names and "samples/step-000030/00.jpg" in names) or "samples/step-000030/00.png" in names
    types = [e.type for e in store.events(job.id)]
    assert types.count("checkpoint.synced") == len(held) and "progress" in types
    losses = [e.data["loss"] for e in store.events(job.id, types=["progress"])]
    assert losses and all(isinstance(v, float) for v in losses)


@pytest.mark.parametrize("engine", ["ai-toolkit", "kohya"])
def test_killed_engine_resumes_with_cumulative_steps(
    engine: str, tmp_path: Path, engines_dir: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AITK_STANDIN_STEP_S", "0.05")
    monkeypatch.setenv("KOHYA_STANDIN_STEP_S", "0.05")
    assert cli("train", write_spec(tmp_path, engines_dir, engine, steps=60), "--detach").code == 0
    store = Store()
    job = store.list_jobs()[0]
    wait_for(lambda: store.get(job.id).step >= 25)
    pid = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "train"))
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: store.get(job.id).state not in ACTIVE, timeout=300)
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, job.error
    assert job.step == 60
    resumed = store.events(job.id, types=["resumed"])
    # From the newest checkpoint (every 10 steps) before the kill; how far the engine got before the
    # kill landed depends on the machine's load.
    at = resumed[0].data["step"] if len(resumed) == 1 else None
    held = 1 if engine == "ai-toolkit" else 0  # ai-toolkit's `_000000020` holds 21 steps
    assert at is not None and 20 <= at < 60 and at % 10 == held, resumed
    steps = [e.data["step"] for e in store.events(job.id, types=["progress"])]
    after = steps[steps.index(max(s for s in steps if s <= at)) :]
    assert min(after) > 10  # the engine's own counter restarted; loraflow's did not
    assert steps[-1] == 60
    if engine == "ai-toolkit":  # its first bar line after the resume shows the resume step again
        ordered = store.events(job.id, types=["resumed", "progress"])
        first = next(i for i, e in enumerate(ordered) if e.type == "resumed")
        assert all(e.data["step"] > at for e in ordered[first + 1 :])


def aitk_checkpoints(root: Path, steps: list[int]) -> None:
    from safetensors.torch import save_file

    from loraflow.testing.fake_lora import diffusers_lora

    root.mkdir(parents=True, exist_ok=True)
    for step in steps:
        save_file(
            diffusers_lora(4, step),
            root / f"mascot_{step:09d}.safetensors",
            metadata={"training_info": f'{{"step": {step}, "epoch": 0}}'},
        )


def aitk_standin_config(tmp_path: Path, steps: int):
    """A `mascot` job of `steps` steps with no sampling, its layout and the config the ai-toolkit stand-in runs."""
    from loraflow.engines.aitoolkit_config import render_config

    spec = parse_spec(
        {
            "name": "mascot",
            "dataset": {"path": str(tmp_path)},
            "base_model": "flux-dev",
            "training": {"steps": steps},
            "sampling": {"every_n_steps": 0, "at_end": False},
        }
    )
    layout = JobLayout(str(tmp_path / "job"))
    (tmp_path / "job" / "dataset").mkdir(parents=True)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(render_config(spec, layout, "j", "x")))
    return spec, layout, cfg


def test_aitoolkit_ctime_trap_and_truncated_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Files restored in the wrong order: ai-toolkit alone would resume from the oldest step."""
    from loraflow.engines.aitoolkit_config import render_config
    from loraflow.engines.aitoolkit_files import save_root
    from loraflow.testing.aitoolkit_standin import run

    spec, layout, cfg = aitk_standin_config(tmp_path, 40)
    root = save_root(spec, layout)
    aitk_checkpoints(root, [10, 20, 30])
    data = (root / "mascot_000000030.safetensors").read_bytes()
    (root / "mascot_000000030.safetensors").write_bytes(data[: len(data) - 100])  # killed mid-save
    time.sleep(0.01)
    os.utime(root / "mascot_000000010.safetensors")  # copied last onto a new host: newest ctime

    actions = AitkEngine().prepare_resume(spec, layout)
    assert "deleted damaged checkpoint mascot_000000030.safetensors" in actions
    assert "moved mascot_000000010.safetensors to checkpoints/step-000011" in actions
    assert sorted(p.name for p in root.glob("*.safetensors")) == ["mascot_000000020.safetensors"]
    assert "mascot_000000020.safetensors holds 21 steps: resuming after step 21" in actions
    assert AitkEngine().prepare_resume(spec, layout) == ["resuming from mascot_000000020.safetensors"]  # once
    assert run(str(cfg)) == 0
    out = capsys.readouterr()
    assert "Found step 21 in metadata" in out.out  # loop index 20 (the 21st step) is not trained again
    assert "| 21/40 [" in out.err and "| 22/40 [" in out.err

    # the trap itself, without loraflow's preparation:
    shutil_root = tmp_path / "trap"
    spec2 = spec.model_copy(update={"name": "mascot"})
    layout2 = JobLayout(str(shutil_root))
    (shutil_root / "dataset").mkdir(parents=True)
    cfg.write_text(yaml.safe_dump(render_config(spec2, layout2, "j", "x")))
    aitk_checkpoints(save_root(spec2, layout2), [10, 20])
    time.sleep(0.01)
    os.utime(save_root(spec2, layout2) / "mascot_000000010.safetensors")
    assert run(str(cfg)) == 0
    assert "Found step 10 in metadata" in capsys.readouterr().out


def test_kohya_prepare_resume_drops_incomplete_state(tmp_path: Path) -> None:
    from loraflow.engines.kohya_files import out_dir

    spec = parse_spec(
        {"name": "mascot", "dataset": {"path": str(tmp_path)}, "base_model": "flux-dev", "engine": "kohya"}
    )
    layout = JobLayout(str(tmp_path / "job"))
    out = Path(out_dir(layout))
    for step in (10, 20):
        state = out / f"mascot-step{step:08d}-state"
        state.mkdir(parents=True)
        (state / "train_state.json").write_text(f'{{"current_epoch": 1, "current_step": {step}}}')
    (out / "mascot-step00000030-state").mkdir()  # killed while saving: no train_state.json
    (out / "mascot-step00000030.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    actions = KohyaEngine().prepare_resume(spec, layout)
    assert "deleted damaged checkpoint mascot-step00000030.safetensors" in actions
    assert "deleted incomplete state mascot-step00000030-state" in actions
    cmd = KohyaEngine().command(spec, layout, "python3")
    tail = cmd.argv[-5:]
    assert tail == [
        "--resume",
        str(out / "mascot-step00000020-state"),
        "--skip_until_initial_step",
        "--initial_step",
        "20",
    ]
