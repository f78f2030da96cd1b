"""The compute section: where training runs (local, an SSH host, a rented GPU) and what it may cost per hour."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from loraflow.spec.strict import Strict


class SshTarget(Strict):
    host: str = Field(description="Host name or IP address.")
    port: int = Field(22, ge=1, le=65535)
    user: str = "root"
    identity_file: str | None = Field(None, description="Private key path (0600); never the key itself.")
    root: str = Field("~/loraflow", description="Folder on the host under which jobs live.")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        # A name or address only: ssh would read '-oProxyCommand=...' or 'a b' as options or commands.
        if not (_HOST_NAME.fullmatch(value) or _HOST_V6.fullmatch(value)):
            raise ValueError("give a host name or IP address (letters, digits, '.', '-', ':'; not starting with '-')")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not _USER_NAME.fullmatch(value):
            raise ValueError("give a login name (letters, digits, '_', '.', '-'; not starting with '-')")
        return value


_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?")
_HOST_V6 = re.compile(r"[0-9A-Fa-f:]{2,39}")
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}")
_INFRA = re.compile(r"[a-z][a-z0-9-]{0,30}(/[A-Za-z0-9*][A-Za-z0-9_.*:@-]{0,120}){0,2}")
_PROGRAM = re.compile(r"[A-Za-z0-9_./+-]+")
NOT_YET: set[str] = set()  # providers the schema names that have no implementation yet


class GpuRequirements(Strict):
    min_vram_gb: int | None = Field(None, ge=1, description="Defaults to the VRAM preset or the model's need.")
    names: list[str] = Field(default_factory=list, description="Allowed GPU names, e.g. ['RTX 4090', 'A6000'].")
    max_usd_per_hour: float | None = Field(None, gt=0)
    region: str | None = None
    disk_gb: int = Field(80, ge=10)
    min_reliability: float = Field(0.98, ge=0, le=1)
    verified_only: bool = True


class RunPodOptions(Strict):
    """What only RunPod asks when renting a pod (compute.provider: runpod)."""

    cloud: Literal["secure", "community", "all"] = Field(
        "all",
        description="secure: RunPod's own data centres; community: vetted hosts, cheaper; all: the cheaper job "
        "of both.",
    )
    interruptible: bool = Field(
        False,
        description="Rent a spot pod at a bid: cheaper, but RunPod may stop it at any time (the job then moves "
        "to a new pod from its newest checkpoint, as after any lost host).",
    )
    bid_usd_per_gpu: float | None = Field(
        None, gt=0, description="The spot bid per GPU and hour; default: the GPU type's current minimum bid."
    )
    volume_gb: int = Field(0, ge=0, description="A pod volume (kept while the pod is stopped); 0: none.")


class SkyPilotOptions(Strict):
    """What only SkyPilot asks when renting (compute.provider: skypilot); where is compute.infra."""

    use_spot: bool = Field(
        False,
        description="Rent spot (preemptible) machines at the catalog's spot price: cheaper, but the cloud may take "
        "them at any time (the job then moves to a new machine from its newest checkpoint, as after any lost host).",
    )


MAX_GPUS = 8  # the largest single machines Vast.ai and the clouds rent; one process per GPU, one machine


class ComputeSpec(Strict):
    provider: Literal["local", "ssh", "vastai", "runpod", "skypilot"] = "local"
    gpus: int = Field(
        1,
        ge=1,
        le=MAX_GPUS,
        description="GPUs on one machine, one training process each (data parallel through accelerate); "
        "the global batch is gpus x batch_size x gradient_accumulation.",
    )
    gpu: GpuRequirements = Field(default_factory=GpuRequirements)
    ssh: SshTarget | None = None
    runpod: RunPodOptions = Field(default_factory=RunPodOptions)
    target: str | None = Field(
        None, description="Name of an SSH host the operator registered (LORAFLOW_SSH_HOSTS); instead of ssh."
    )
    infra: str | None = Field(
        None,
        description="Where SkyPilot rents (provider skypilot), or is priced beside the spec's own provider in "
        "`loraflow estimate`, in SkyPilot's own syntax: a cloud and its region ('aws', 'gcp/us-central1') or a "
        "Slurm cluster ('slurm/<name>' of ~/.slurm/config); Kubernetes is refused for now (docs/remote.md).",
    )
    skypilot: SkyPilotOptions = Field(default_factory=SkyPilotOptions)
    max_retries: int = Field(2, ge=0, description="New hosts leased after a dead or stalled one.")
    python: str = Field("python3", description="Python on a remote host (ssh, vastai, runpod) that runs the engine.")
    setup: str | None = Field(
        None, description="Shell run once per remote lease before training; default: the engine's set-up."
    )
    ready_timeout_s: int = Field(900, ge=10, description="A rented host not ready by then is destroyed.")
    heartbeat_minutes: float = Field(
        10,
        gt=0,
        description="A rented host that hears nothing from the orchestrator for this long saves a checkpoint, "
        "pushes it to storage when it can, and destroys itself.",
    )

    @model_validator(mode="before")
    @classmethod
    def _gpu_count(cls, data: object) -> object:
        """`compute.gpu.count` (the key before `gpus`) is read as `compute.gpus`; both, different, is an error."""
        if not isinstance(data, dict) or not isinstance(data.get("gpu"), dict) or "count" not in data["gpu"]:
            return data
        gpu = dict(data["gpu"])
        count = gpu.pop("count")
        if "gpus" in data and data["gpus"] != count:
            raise ValueError(
                f"compute.gpus is {data['gpus']} but compute.gpu.count is {count}: give only compute.gpus"
            )
        return {**data, "gpu": gpu, "gpus": count}

    @field_validator("python")
    @classmethod
    def _python(cls, value: str) -> str:
        if not _PROGRAM.fullmatch(value) or value.startswith("-"):
            raise ValueError("give one program name or path, such as python3 or /opt/conda/bin/python")
        return value

    @field_validator("infra")
    @classmethod
    def _infra(cls, value: str | None) -> str | None:
        # Reaches SkyPilot as data: a name and up to two parts, never an option or a path.
        if value is not None and not _INFRA.fullmatch(value):
            raise ValueError("give SkyPilot's infra: a cloud, cloud/region, k8s/<context> or slurm/<cluster>")
        return value

    @field_validator("provider")
    @classmethod
    def _provider_built(cls, value: str) -> str:
        # Named in the schema (the design's next providers) but not built yet: refused here, by name, rather
        # than failing deep in the acquire stage with a FileNotFoundError.
        if value in NOT_YET:
            raise ValueError(
                f"'{value}' is not available in this version of loraflow; use local, ssh, vastai, runpod or skypilot"
            )
        return value

    @model_validator(mode="after")
    def _ssh_needs_target(self) -> ComputeSpec:
        if self.provider == "ssh" and self.ssh is None and self.target is None:
            raise ValueError("provider 'ssh' needs compute.ssh with at least a host, or compute.target")
        if self.ssh is not None and self.target is not None:
            raise ValueError("give compute.ssh or compute.target, not both")
        return self
