"""A stand-in for SkyPilot behind loraflow's SkyApi (LORAFLOW_SKYPILOT_API=loraflow.testing.sky_standin:StandIn),
for the tests' runner processes, which cannot import SkyPilot (.venv) and must not reach a cloud.

It does what SkyPilot does with the task loraflow hands it, on this machine: a "cluster" is an OpenSSH
server on loopback with its own HOME (testing/containers.py, as the Vast.ai emulator's instances), the task's
file mount placed, its `setup` run, its `run` started as the cluster's one job; `status` answers UP with a
handle that names the address and login; `queue` says whether that job still runs; when it has ended the
cluster is torn down (autostop with down, waiting for jobs), as is a `down`. The catalog has two GPUs.

State lives in LORAFLOW_SKY_STANDIN_DIR (one JSON file and a folder per cluster), so the test process and
the runner processes see the same clusters. It is a stand-in for SkyPilot's answers, not a judge of the task:
tests/remote/test_skypilot.py checks the task with SkyPilot's own classes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from loraflow.testing.containers import kill_marked, start_sshd
from loraflow.testing.sshd import SSHD

DIR_ENV = "LORAFLOW_SKY_STANDIN_DIR"
MARKER = "LORAFLOW_SKY_STANDIN"
CATALOG = [  # lambda's prices, one region each
    {"accelerator": "A100", "cloud": "lambda", "region": "us-east-1", "instance_type": "gpu_1x_a100_sxm4",
     "price": 1.29, "vram_gb": 40.0},
    {"accelerator": "H100", "cloud": "lambda", "region": "us-east-1", "instance_type": "gpu_1x_h100_pcie",
     "price": 2.49, "vram_gb": 80.0},
]


class StandIn:
    def __init__(self) -> None:
        self.root = Path(os.environ[DIR_ENV])
        self.root.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _state(self) -> Iterator[dict[str, Any]]:
        """The clusters, read and written under a file lock (runner processes and the test share them)."""
        with open(self.root / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.root / "state.json"
            state = json.loads(path.read_text()) if path.exists() else {"clusters": {}, "log": []}
            yield state
            path.write_text(json.dumps(state, indent=1))

    # --- SkyApi's methods ---------------------------------------------------------------------------

    def accelerators(
        self, cloud: str, names: list[str], region: str | None, count: int, spot: bool = False
    ) -> list[dict[str, Any]]:
        return [dict(r) for r in CATALOG if count == 1 and not spot and (not names or r["accelerator"] in names)]

    def launch(self, plan: Any, cluster: str) -> str:
        home = self.root / cluster / "home"
        if home.exists():
            shutil.rmtree(home)
        home.mkdir(parents=True)
        for remote, local in {"~/.loraflow-watch/loraflow.pub": plan.key_file}.items():  # the task's file mount
            target = home / remote.removeprefix("~/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(local, target)
        marker = f"{MARKER}={self.root.name}-{cluster}"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **plan.envs,
               marker.split("=")[0]: marker.split("=")[1]}
        subprocess.run(["sh", "-c", plan.setup()], env=env, cwd=home, check=True)  # the task's setup
        keys = (home / ".ssh" / "authorized_keys").read_text().splitlines()
        host_key = self.root / cluster / "ssh_host_ed25519_key"  # each machine its own, as a cloud's are
        host_key.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        sshd, port = start_sshd(self.root / cluster, host_key, keys, {"HOME": str(home), **env}, SSHD)
        with open(self.root / cluster / "run.log", "ab") as log:  # the task's run: the cluster's one job
            job = subprocess.Popen(["sh", "-c", plan.run()], env=env, cwd=home, stdout=log, stderr=log,
                                   start_new_session=True)
        with self._state() as state:
            state["clusters"][cluster] = {
                "port": port, "sshd": sshd.pid, "job": job.pid, "marker": marker, "launched_at": int(time.time()),
                "accelerators": plan.accelerators, "infra": plan.infra, "image": plan.image,
            }
            state["log"].append(["launch", cluster])
        return f"req-{cluster}"

    def request_state(self, request_id: str) -> str:
        return "SUCCEEDED"

    def result(self, request_id: str) -> Any:
        return (1, None)

    def cancel(self, request_id: str) -> None:
        return None

    def exec(self, task: Any, cluster: str) -> int | None:
        raise NotImplementedError("the stand-in runs one job per cluster")

    def status(self, cluster: str) -> dict[str, Any] | None:
        with self._state() as state:
            row = state["clusters"].get(cluster)
        if row is None:
            return None
        if not _alive(row["job"]):  # autostop: down once no job runs
            self.down(cluster, why="autostop")
            return None
        handle = SimpleNamespace(cached_external_ips=["127.0.0.1"], cached_external_ssh_ports=[row["port"]],
                                 ssh_user=os.environ.get("USER") or "root", docker_user=None,
                                 get_hourly_price=lambda: 1.29)
        return {"name": cluster, "status": "UP", "handle": handle, "launched_at": row["launched_at"],
                "resources_str": f"1x {row['accelerators'][0]}"}

    def clusters(self, prefix: str) -> list[dict[str, Any]]:
        with self._state() as state:
            names = [c for c in state["clusters"] if c.startswith(prefix)]
        return [r for c in names if (r := self.status(c))]

    def queue(self, cluster: str) -> list[dict[str, Any]]:
        with self._state() as state:
            row = state["clusters"].get(cluster)
        if row is None:
            return []
        return [{"job_id": 1, "job_name": cluster, "status": "RUNNING" if _alive(row["job"]) else "SUCCEEDED"}]

    def logs(self, cluster: str, job_id: int | None, tail: int = 50) -> str:
        path = self.root / cluster / "run.log"
        return "\n".join(path.read_text().splitlines()[-tail:]) if path.exists() else ""

    def down(self, cluster: str, why: str = "down") -> bool:
        with self._state() as state:
            row = state["clusters"].pop(cluster, None)
            if row is not None:
                state["log"].append([why, cluster])
        if row is None:
            return False
        kill_marked(row["marker"])
        for pid in (row["sshd"], row["job"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return True


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def state(root: Path) -> dict[str, Any]:
    """The stand-in's clusters and its log of launches and teardowns, for a test to read."""
    path = root / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"clusters": {}, "log": []}
