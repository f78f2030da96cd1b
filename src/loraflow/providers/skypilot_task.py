"""The SkyPilot task a job rents its machine with, built from the spec by SkyPilot's own classes.

SkyPilot leases the machine (any of its clouds, a Kubernetes context or a Slurm cluster, `compute.infra`);
loraflow does everything after that over SSH exactly as on Vast.ai: upload, train, follow, copy back.
So the task is small:

- `resources`: the job's GPUs (`compute.gpus` of one name; several allowed names become SkyPilot's
  `any_of`, priced by its optimizer), the disk, the engine's image (`docker:<image>`), the price cap, and
  `autostop: {idle_minutes, down: true, wait_for: jobs}`: the cluster is torn down by SkyPilot itself
  once no job of its queue runs;
- `file_mounts` + `setup`: loraflow's own SSH public key, mounted and added to the head node's
  authorized_keys (loraflow pins the host key per lease and needs no SkyPilot key);
- `run`: the host's dead-man switch (providers/vast_watch.py's watcher, waited on). It is the cluster's only
  SkyPilot job and runs while the orchestrator's heartbeat is fresh; when the heartbeat stops it asks the
  trainer for a checkpoint, pushes it to the rescue URL and ends, and autostop tears the cluster down. The
  host holds no cloud credentials of loraflow's: SkyPilot's own skylet does the teardown.

`build_task` returns the `sky.Task`; constructing it runs SkyPilot's validation (accelerator names, infra,
disk, image, autostop), and `task_config` is its YAML form (what `sky launch task.yaml` would read), which
`make test` checks offline with SkyPilot's own schema and `Task.from_yaml_config`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from loraflow.errors import UserInputError

CLUSTER_PREFIX = "loraflow-"
AUTOSTOP_IDLE_MINUTES = 1  # after the watcher job ends: long enough for `sky` to see it, short of billing
KEY_REMOTE = "~/.loraflow-watch/loraflow.pub"
DOCKER_SSH_PORT = 10022  # SkyPilot's sshd inside a docker image (sky.skylet.constants.DEFAULT_DOCKER_PORT)
_CLUSTER = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def cluster_name(job_id: str, tag: str = "") -> str:
    """`loraflow-<job id>--<tag>`: how loraflow's clusters are found again (SkyPilot's cluster table). Each
    launch has its own tag, so the machine a lost one is replaced with is a new cluster with its own host key
    (the lease pins keys per instance id)."""
    name = f"{CLUSTER_PREFIX}{job_id}".lower().replace("_", "-") + (f"--{tag}" if tag else "")
    if not _CLUSTER.fullmatch(name) or len(name) > 60:
        raise UserInputError(f"job id {job_id!r} does not make a SkyPilot cluster name", fix="use a plain job id")
    return name


def job_of(cluster: str) -> str:
    """The job a cluster of loraflow's was launched for."""
    return cluster.removeprefix(CLUSTER_PREFIX).split("--")[0]


@dataclass(frozen=True)
class TaskPlan:
    """Everything the task needs, decided by loraflow before SkyPilot sees it (so it can be checked
    without SkyPilot installed); `build_task` turns it into SkyPilot's objects."""

    name: str
    accelerators: list[str]  # SkyPilot names ("RTX4090", "A100-80GB"); one per choice
    gpus: int
    infra: str | None
    disk_gb: int
    image: str | None
    use_spot: bool
    max_usd_per_hour: float | None
    key_file: str  # loraflow's public key here, mounted to KEY_REMOTE
    watch: str  # the watcher's start text (vast_watch.watch_script), waited on: the job lives while it does
    envs: dict[str, str]

    def setup(self) -> str:
        """loraflow's key into the login's authorized_keys: $HOME's, and on Slurm (where SkyPilot sets HOME to
        the cluster's own folder) also the account's home from the user database, the file the `sshd -i` of
        SkyPilot's route reads, as SkyPilot adds its own key there."""
        add = (
            'mkdir -p "$d" && chmod 700 "$d" && touch "$d/authorized_keys" && '
            f'(grep -qxFf {KEY_REMOTE} "$d/authorized_keys" || cat {KEY_REMOTE} >> "$d/authorized_keys") && '
            'chmod 600 "$d/authorized_keys"'
        )
        folders = "~/.ssh"
        if (self.infra or "").lower().startswith("slurm"):
            folders += ' "$(getent passwd "${USER:-$(id -un)}" | cut -d: -f6)/.ssh"'
        return f'for d in {folders}; do [ "$d" = "/.ssh" ] || {{ {add}; }} || exit 1; done'

    def run(self) -> str:
        return f"{self.watch.rstrip()}\nwait\n"

    def resources_args(self, accelerator: str) -> dict[str, Any]:
        args: dict[str, Any] = {
            "accelerators": {accelerator: self.gpus},
            "disk_size": self.disk_gb,
            "use_spot": self.use_spot,
            "autostop": {"idle_minutes": AUTOSTOP_IDLE_MINUTES, "down": True, "wait_for": "jobs"},
        }
        if self.infra:
            args["infra"] = self.infra
        if self.image:
            args["image_id"] = self.image if self.image.startswith("docker:") else f"docker:{self.image}"
            args["ports"] = [DOCKER_SSH_PORT]  # loraflow's SSH goes to the container's sshd directly
        if self.max_usd_per_hour:
            args["max_hourly_cost"] = self.max_usd_per_hour
        return args


def import_sky() -> Any:
    """SkyPilot itself, or the message that says how to get it."""
    try:
        import sky
    except ImportError as exc:
        raise UserInputError(
            "compute.provider: skypilot needs SkyPilot", fix="pip install 'loraflow[skypilot]'"
        ) from exc
    return sky


def build_task(plan: TaskPlan) -> Any:
    """The `sky.Task`, validated by SkyPilot as it is built: a GPU name, infra or image SkyPilot does not
    know is refused here, before anything is rented, with SkyPilot's own message."""
    sky = import_sky()
    from sky import exceptions

    try:
        resources = [sky.Resources(**plan.resources_args(a)) for a in plan.accelerators]
        task = sky.Task(
            plan.name,
            setup=plan.setup(),
            run=plan.run(),
            envs=plan.envs,
            file_mounts={KEY_REMOTE: plan.key_file},
        )
        task.set_resources(resources[0] if len(resources) == 1 else set(resources))
        task.validate()
    except (ValueError, exceptions.ResourcesUnavailableError, exceptions.NotSupportedError) as exc:
        raise UserInputError(
            f"SkyPilot refuses the job's machine: {exc}",
            fix="check compute.infra and compute.gpu.names against `sky show-gpus` and `sky check`",
        ) from exc
    return task


def task_config(task: Any) -> dict[str, Any]:
    """The task as SkyPilot's YAML (`sky launch` reads the same)."""
    return dict(task.to_yaml_config())
