"""The dead-man switch a SkyPilot cluster runs as its one SkyPilot job (the task's `run`: the shared watcher
with SKY_END as its self-destroy, waited on): while the heartbeat is fresh the job keeps running; when it
goes stale the watcher asks the trainer for a checkpoint and the job *ends*, which is what lets SkyPilot's
autostop (down, waiting for jobs) tear the cluster down. It calls no provider API."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from loraflow.providers.skypilot import SKY_END
from loraflow.providers.skypilot_task import TaskPlan
from loraflow.providers.vast_watch import watch_script
from tests.integration.test_local_jobs import wait_for


def test_the_watcher_job_runs_while_fed_then_stops_the_trainer_and_ends(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "job"
    (home / ".loraflow-watch").mkdir(parents=True)
    (root / "run").mkdir(parents=True)
    (home / ".loraflow-watch" / "root").write_text(str(root))
    # A trainer that saves a checkpoint when asked to stop (SIGTERM), as the builtin trainer does.
    trainer = subprocess.Popen(
        ["sh", "-c", f"trap 'mkdir -p {root}/checkpoints/step-000007; exit 0' TERM; while :; do sleep 0.1; done"]
    )
    threading.Thread(target=trainer.wait, daemon=True).start()  # reaped when it exits: no zombie to wait on
    (root / "run" / "train.pid").write_text(str(trainer.pid))
    plan = TaskPlan("loraflow-j", ["H100"], 1, None, 80, None, False, None, "k.pub",
                    watch_script(2, None, SKY_END), {})  # stale after 2 s, polled every second
    heartbeat = home / ".loraflow-watch" / "heartbeat"
    watcher = subprocess.Popen(  # the SkyPilot job: the task's run command in the head node's shell
        ["sh", "-c", plan.run()], env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, start_new_session=True
    )
    try:
        fed_until = time.monotonic() + 4  # twice the window, fed all along
        while time.monotonic() < fed_until:
            heartbeat.touch()
            time.sleep(0.3)
            assert watcher.poll() is None, "the watcher ended while its heartbeat was fresh"
        assert trainer.poll() is None
        # Nobody feeds it now: it stops the trainer, which saves, and the watcher job ends by itself.
        assert watcher.wait(timeout=60) == 0
    finally:
        if watcher.poll() is None:
            os.killpg(watcher.pid, signal.SIGKILL)
        if trainer.poll() is None:
            trainer.kill()
    wait_for(lambda: trainer.poll() is not None, what="the trainer to exit")
    assert (root / "checkpoints" / "step-000007").is_dir()
    assert "no heartbeat" in (home / ".loraflow-watch" / "fired").read_text()
    log = (home / ".loraflow-watch" / "watch.log").read_text()
    assert "SkyPilot autostop tears the cluster down" in log
    assert "destroy call failed" not in log  # its "self-destroy" is to end: no API call that could fail
