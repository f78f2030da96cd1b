"""The dead-man switch a SkyPilot cluster runs as its one SkyPilot job (providers/skypilot.py's SKY_END
ending of the shared watcher): while the heartbeat is fresh it keeps running; when it goes stale it asks
the trainer for a checkpoint and then *ends*, which is what lets SkyPilot's autostop (down, waiting for
jobs) tear the cluster down. It never calls Vast.ai's API."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from loraflow.providers.skypilot import SKY_END
from loraflow.providers.vast_watch import watch_body
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
    script = tmp_path / "watch.sh"
    script.write_text(watch_body(2, None, SKY_END))  # stale after 2 s, polled every second
    heartbeat = home / ".loraflow-watch" / "heartbeat"
    watcher = subprocess.Popen(["sh", str(script)], env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
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
        for proc in (watcher, trainer):
            if proc.poll() is None:
                proc.kill()
    wait_for(lambda: trainer.poll() is not None, what="the trainer to exit")
    assert (root / "checkpoints" / "step-000007").is_dir()
    assert "no heartbeat" in (home / ".loraflow-watch" / "fired").read_text()
    log = (home / ".loraflow-watch" / "watch.log").read_text()
    assert "SkyPilot autostop tears the cluster down" in log
    assert "destroy call failed" not in log  # no Vast.ai API call from a SkyPilot host
