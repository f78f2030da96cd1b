"""The real ai-toolkit, unchanged, trains loraflow's tiny Flux on the CPU through `loraflow train`.

Needs LORAFLOW_AITOOLKIT_DIR: an ai-toolkit checkout (loraflow is checked against 27a03a91) with the venv
scripts/aitoolkit_cpu_env.sh builds in it. A SIGKILL mid-run is resumed by the runner; progress and
losses are checked against ai-toolkit's own loss_log.db, checkpoints and the final LoRA against the files,
and the LoRA is loaded in diffusers. A run whose config leaves the LoRA unchanged ends failed with lora_inert.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml

from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from tests.conftest import EXAMPLES

AITK = Path(os.environ.get("LORAFLOW_AITOOLKIT_DIR", "/nonexistent"))
pytestmark = pytest.mark.skipif(
    not ((AITK / "run.py").is_file() and (AITK / "venv" / "bin" / "python").exists()),
    reason="set LORAFLOW_AITOOLKIT_DIR to an ai-toolkit checkout with its venv (scripts/aitoolkit_cpu_env.sh DIR) "
    "to train with the real ai-toolkit",
)
STEPS = 40


def wait_for(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError("timed out")


def tiny_spec(tiny: Path, **training: object) -> dict:
    return {
        "name": "mascot",
        "dataset": {"path": str(EXAMPLES / "sample_dataset"), "trigger_word": "lfx", "checks": {"min_resolution": 64}},
        "base_model": str(tiny),
        "engine": "ai-toolkit",
        "network": {"rank": 4, "alpha": 4},
        "training": {
            "steps": STEPS,
            "resolution": [64],
            "batch_size": 1,
            "precision": "fp32",
            "quantize": "none",
            "gradient_checkpointing": False,
            "learning_rate": 1e-3,
            **training,
        },
        "sampling": {"every_n_steps": 0, "at_end": False},
        "checkpointing": {"every_n_steps": 10, "keep_last": 10},
        "monitor": {"max_restarts": 2},
        # (diffusers' kohya-Flux converter assumes FLUX.1's widths: the tiny model's LoRA loads in this layout)
        "output": {"lora_format": "diffusers"},
    }


def test_real_aitoolkit_trains_resumes_after_sigkill_and_agrees_with_its_own_files(tmp_path: Path, cli) -> None:
    from safetensors import safe_open

    from loraflow.engines.aitoolkit_loss_log import read_loss_log
    from loraflow.trainer.tiny import build_tiny_flux

    tiny = build_tiny_flux(tmp_path / "tiny-flux")  # a local folder: ai-toolkit takes flux-dev's road
    spec = tiny_spec(tiny)
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(spec))
    started = time.monotonic()
    assert cli("train", path, "--detach").code == 0
    store = Store()
    job = store.list_jobs()[0]
    # killed after its first save (`_000000010`, the 11th step) and before the end
    wait_for(lambda: any(e.data["step"] == 11 for e in store.events(job.id, types=["checkpoint.saved"])), 600)
    wait_for(lambda: store.get(job.id).step >= 13 or store.get(job.id).state not in ACTIVE, 300)
    pid = LocalHost().pid(Handle.in_folder(JobLayout(str(job.folder)).run, "train"))
    assert pid is not None and store.get(job.id).step < STEPS, "finished before the kill: use more steps"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: store.get(job.id).state not in ACTIVE, 900)
    elapsed = time.monotonic() - started
    job = store.get(job.id)
    assert job.state is JobState.COMPLETED, job.error
    assert job.step == STEPS

    events = store.events(job.id, types=["resumed", "progress", "checkpoint.saved", "checkpoint.synced"])
    resumed = [e.data["step"] for e in events if e.type == "resumed"]
    assert resumed and all(r % 10 == 1 for r in resumed), resumed  # the steps `_0000000N0` holds: redo nothing
    first = next(i for i, e in enumerate(events) if e.type == "resumed")
    assert all(e.data["step"] > resumed[0] for e in events[first + 1 :] if e.type == "progress")  # no duplicate
    assert [e.data["step"] for e in events if e.type == "progress"][-1] == STEPS

    root = job.folder / "aitk" / "mascot"
    rows = {int(r["step"]): r["loss"] for r in read_loss_log(root / "loss_log.db")}
    redone_after: list[int | None] = []  # per event: the step a later resume restarted from
    later = None
    for e in reversed(events):
        if e.type == "resumed":
            later = e.data["step"] if later is None else min(later, e.data["step"])
        redone_after.append(later)
    redone_after.reverse()
    compared, run_start = 0, 0
    for e, later in zip(events, redone_after, strict=True):
        if e.type == "resumed":
            run_start = e.data["step"]
        if e.type != "progress" or e.data["step"] == run_start + 1:
            continue  # ai-toolkit logs no row for the first step of a run
        if later is not None and e.data["step"] > later:
            continue  # done before the kill and again after it: the table holds the second
        row = rows.get(e.data["step"] - 1)  # the table is indexed by loop index, from 0
        if row is not None:
            compared += 1
            assert f"{e.data['loss']:.3e}" == f"{row:.3e}", (e.data, row)
    assert compared >= 5

    saved = sorted({e.data["step"] for e in events if e.type == "checkpoint.saved"})
    assert saved and all(s % 10 == 1 for s in saved), saved
    for step in saved:
        lora = job.folder / "checkpoints" / f"step-{step:06d}" / "lora.safetensors"
        assert lora.is_file()
    final = root / "mascot.safetensors"
    with safe_open(str(final), "pt") as f:
        assert '"step": 40' in f.metadata()["training_info"]
    assert Path(job.outputs.lora).is_file()
    log = Path(Handle.in_folder(JobLayout(str(job.folder)).run, "train").log_file).read_text(errors="replace")
    # every CLIP and T5 tensor loaded: transformers 5.x prints a LOAD REPORT of MISSING/UNEXPECTED keys otherwise
    assert "LOAD REPORT" not in log and "| MISSING" not in log

    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(tiny))
    pipe.load_lora_weights(str(final), adapter_name="aitk")
    pipe.load_lora_weights(job.outputs.lora, adapter_name="loraflow")
    assert set(pipe.get_list_adapters()["transformer"]) == {"aitk", "loraflow"}
    print(f"real ai-toolkit job with a SIGKILL: {elapsed:.0f} s, {compared} losses equal to loss_log.db's")


def test_real_aitoolkit_run_that_leaves_the_lora_unchanged_fails_inert_and_is_not_packaged(
    tmp_path: Path, cli
) -> None:
    """ai-toolkit runs, saves and exits 0 with a LoRA whose B matrices never moved (the spec refuses a
    learning rate of 0; 1e-30 moves no weight measurably): the result check fails the job with lora_inert
    and the hint naming the learning rate, and nothing is packaged."""
    from loraflow.trainer.tiny import build_tiny_flux

    tiny = build_tiny_flux(tmp_path / "tiny-flux")
    path = tmp_path / "inert.yaml"
    path.write_text(yaml.safe_dump(tiny_spec(tiny, steps=12, learning_rate=1e-30)))
    assert cli("train", path).code != 0
    store = Store()
    job = store.list_jobs()[0]
    assert job.state is JobState.FAILED, job.error
    (error,) = store.events(job.id, types=["error"])
    assert error.data["code"] == "lora_inert", error.data
    assert "learning_rate 1e-30" in error.data["hint"] and "base weights" in error.data["message"]
    assert job.outputs.bundle is None
    assert "package" not in [e.data["stage"] for e in store.events(job.id, types=["stage.started"])]
