"""The effect check and scorecard on the leased host, before it is let go (docs/scorecard.md).

The base model is where the job trained: on the rented or SSH host. So the check runs there, the same
`python -m loraflow.evaluation <config>` process as on this machine, with every path as the host sees
it: the model the trainer loaded, the job's prepared dataset, the held-out images (sent now: they never
went with the training parcels) and the LoRA files the structural check passed. A LoRA file the host
still has byte for byte (same sha256) is used where it lies; any other is sent. When the process ends,
its scorecard, renders and log come back into this machine's `evaluation/` folder, and the runner reads
them as it reads a local run's.
"""

from __future__ import annotations

import os
import shlex
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from loraflow.evaluation import plan
from loraflow.evaluation.config import LoraUnderTest
from loraflow.files import tar_folder
from loraflow.hosts.base import Handle, ProcessStatus
from loraflow.hosts.ssh import sha256_file
from loraflow.layout import JobLayout

if TYPE_CHECKING:
    from loraflow.running.context import RunContext
    from loraflow.running.remote import RemoteLease

NAME = "evaluation"
HOST_CONFIG = "config.host.json"
POLL_S = 1.0


def host_model(lease: RemoteLease) -> str:
    """What the trainer loaded on the host: the model folder sent there, or the Hub id it downloaded."""
    from loraflow.running.lease_files import model_ref

    return model_ref(lease)[0]


def place_loras(ctx: RunContext, lease: RemoteLease, loras: list[LoraUnderTest]) -> list[LoraUnderTest]:
    """The same LoRA files on the host: the host's own copy where it is byte for byte the file the
    structural check judged here (final: the engine's output path; checkpoints: their folders), else the
    local file sent to `evaluation/loras/` there."""
    host, remote = lease.host(), lease.layout()
    placed = []
    for lora in loras:
        local = Path(lora.path)
        if lora.name == "final":
            theirs = ctx.engine.final_lora(ctx.spec, remote)
        else:
            theirs = f"{remote.checkpoints}/step-{lora.step:06d}/lora.safetensors"
        if host.sha256(theirs) != sha256_file(local):
            theirs = f"{remote.evaluation}/loras/{lora.name}.safetensors"
            host.mkdir(f"{remote.evaluation}/loras")
            host.put(local, theirs)
        placed.append(LoraUnderTest(name=lora.name, path=theirs, step=lora.step))
    return placed


def send_parcels(lease: RemoteLease, holdout_count: int) -> None:
    """loraflow itself (the builtin engine sent it for training; other engines did not) and the held-out
    images, which stayed here when the dataset went."""
    host, remote = lease.host(), lease.layout()
    with tempfile.TemporaryDirectory(dir=lease.local.run) as tmp:
        if host.size(f"{remote.root}/lib/loraflow/__init__.py") is None:
            import loraflow

            package = Path(loraflow.__file__).parent
            lease.ship(tar_folder(package, Path(tmp, "lib.tar"), "loraflow"), f"{remote.root}/lib")
        if holdout_count and Path(lease.local.holdout).is_dir():
            lease.ship(tar_folder(Path(lease.local.holdout), Path(tmp, "holdout.tar")), remote.holdout)


def run_there(ctx: RunContext, lease: RemoteLease, local_cfg: Path) -> tuple[int | None, str]:
    """Start the check on the host, wait for it (a check whose log stops moving for
    `monitor.stall_minutes` is killed rather than left billing) and return its exit code and log."""
    host, remote = lease.host(), lease.layout()
    host.mkdir(remote.evaluation)
    cfg_path = f"{remote.evaluation}/{plan.CONFIG}"
    host.put(local_cfg, cfg_path)
    handle = Handle.in_folder(remote.evaluation, NAME)
    host.exec(f"rm -f {shlex.quote(handle.log_file)}", check=False)  # a run before a lost orchestrator
    argv = [ctx.spec.compute.python, "-m", "loraflow.evaluation", cfg_path]
    env = {**lease.env(), **{k: os.environ[k] for k in ("HF_TOKEN",) if k in os.environ}}
    host.run(argv, remote.root, handle, env)
    host.wait_started(handle)
    stall_s = ctx.spec.monitor.stall_minutes * 60
    size, moved = 0, time.monotonic()
    while True:
        status, code = host.status(handle)
        now = host.size(handle.log_file) or 0
        if now != size:
            size, moved = now, time.monotonic()
        if status is not ProcessStatus.RUNNING:
            break
        if time.monotonic() - moved > stall_s:
            host.signal(handle, signal.SIGKILL)
            ctx.emit("warning", {"message": f"result check: no progress on the host for {stall_s / 60:.0f} "
                                            "minutes; stopped"})
            code = None
            break
        time.sleep(POLL_S)
    text = host.read(handle.log_file, 0, 16 << 20).decode("utf-8", "replace") if host.size(handle.log_file) else ""
    return code, text


def bring_back_results(lease: RemoteLease, out_dir: Path) -> None:
    """The scorecard and the renders, into this machine's `evaluation/` (what the bundle and pages read)."""
    host, remote = lease.host(), lease.layout()
    card = f"{remote.evaluation}/scorecard.json"
    if host.size(card) is None:
        return
    for rel in sorted(host.listing(f"{remote.evaluation}/samples")):
        host.get(f"{remote.evaluation}/samples/{rel}", out_dir / "samples" / rel)
    host.get(card, out_dir / "scorecard.json")


def bring_back_in_trainer(ctx: RunContext) -> bool:
    """The builtin trainer's own check on the host (evaluation/after_training.py: it ran after training with
    the model loaded), into this machine's `evaluation/` with its log and the config it ran (as
    config.host.json); False when the host has no scorecard from it."""
    lease: RemoteLease = ctx.place.lease  # type: ignore[attr-defined]
    host, remote = lease.host(), lease.layout()
    if host.size(f"{remote.evaluation}/scorecard.json") is None:
        return False
    out_dir = Path(ctx.layout.evaluation)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scorecard.json").unlink(missing_ok=True)
    bring_back_results(lease, out_dir)
    for theirs, ours in (("evaluation.log", "evaluation.log"), (plan.CONFIG, HOST_CONFIG)):
        if host.size(f"{remote.evaluation}/{theirs}") is not None:
            host.get(f"{remote.evaluation}/{theirs}", out_dir / ours)
    return (out_dir / "scorecard.json").is_file()


def run_on_host(ctx: RunContext, loras: list[LoraUnderTest], holdout_count: int) -> tuple[int, str]:
    """The check of `loras` (local files that passed the structural check) on the job's leased host, its
    results brought back into this machine's `evaluation/` (its log as `evaluation.log`); the process's
    exit code (-9 when it was stopped) and log. Raises LoraflowError when the host cannot run it."""
    lease: RemoteLease = ctx.place.lease  # type: ignore[attr-defined]
    out_dir = Path(ctx.layout.evaluation)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scorecard.json").unlink(missing_ok=True)  # only this run's answer counts
    send_parcels(lease, holdout_count)
    remote: JobLayout = lease.layout()
    placed = place_loras(ctx, lease, loras)
    cfg = plan.eval_config(ctx.spec, ctx.job_id, remote, host_model(lease), placed, holdout_count)
    local_cfg = out_dir / HOST_CONFIG  # kept: what ran on the host, with its paths
    cfg.write(local_cfg)
    ctx.emit("log", {"message": f"result check: running on the host over {len(placed)} LoRA file(s)"})
    code, text = run_there(ctx, lease, local_cfg)
    (out_dir / "evaluation.log").write_text(text, encoding="utf-8")
    if code == 0:
        bring_back_results(lease, out_dir)
    return (code if code is not None else -9), text
