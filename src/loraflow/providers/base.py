"""What every GPU provider does for a job, in the same verbs, so the runner, the estimate, the budget guard,
the dead-man switch and the move to a new host after a lost one work unchanged on each.

The verbs follow SkyPilot's per-cloud provisioners (`sky/provision/<cloud>/instance.py`): offers with a
price, rent, wait until reachable, release, the machines a label marks as ours. One more is loraflow's
own: every rented machine runs the dead-man switch (vast_watch.py) from its start, and destroys itself
with the provider's own API (`self_destroy`) when the orchestrator goes quiet.

A provider names its machines by whatever id its API uses (Vast.ai: an int; RunPod: a string); the job's
lease records it as given and hands it back unchanged.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from loraflow.errors import LoraflowError, UserInputError
from loraflow.providers.estimate import Estimate
from loraflow.spec import TrainSpec

InstanceId = int | str
LABEL_PREFIX = "loraflow:"  # every rented machine's label (Vast.ai) or name (RunPod): `loraflow:<job id>`
SshCheck = Callable[[str, int], None]


class MachineNeeds(Protocol):
    """What the job's engine needs of a machine (engines.engine_needs gives it): providers rent for an
    engine without importing one."""

    min_vram_gb: int
    cuda: str | None
    image: str | None


Needs = Callable[[TrainSpec], MachineNeeds]


@dataclass(frozen=True)
class RankedOffer:
    """One offer priced for this job: the provider's own row (`offer`, its fields as its API names them),
    and the estimate of the whole job on it. `id` is what `create` rents."""

    offer: dict[str, Any]
    estimate: Estimate
    provider: str = "vastai"

    @property
    def id(self) -> Any:
        return self.offer["id"]

    @property
    def gpu(self) -> str:
        return self.estimate.gpu

    @property
    def usd_per_hour(self) -> float:
        return self.estimate.usd_per_hour


@dataclass(frozen=True)
class Rented:
    """A machine the provider lists under loraflow's label: enough to adopt it or reap it."""

    id: InstanceId
    label: str
    status: str | None
    gpu: str | None
    usd_per_hour: float
    started_at: float | None = None

    @property
    def job_id(self) -> str:
        return self.label.removeprefix(LABEL_PREFIX)


@runtime_checkable
class Provider(Protocol):
    """The verbs a rented-GPU provider fills (VastProvider, RunPodProvider; SkyPilot plugs in here too)."""

    name: str  # the compute.provider value
    title: str  # as a person knows it: "Vast.ai", "RunPod"
    ssh_user: str  # who the orchestrator logs in as
    # Optional: `ssh_proxy`, the command SSH talks through (ProxyCommand) when the machine has no address of
    # its own (SkyPilot's Slurm allocations); a provider without it is reached at its address directly.

    def offers(self, spec: TrainSpec) -> list[RankedOffer]:
        """Offers that fit the job, cheapest *job* first; a UserInputError when none does."""
        ...

    def ensure_ssh_key(self, public_key: str) -> None:
        """Make loraflow's public key reach machines rented from now on."""
        ...

    def create(
        self,
        spec: TrainSpec,
        job_id: str,
        ranked: list[RankedOffer],
        on_attempt: Callable[[str], None] = ...,
        max_hours: float | None = None,
    ) -> tuple[InstanceId, RankedOffer]:
        """Rent the best offer still free, labelled for the job, with the dead-man switch armed at start."""
        ...

    def dead_reason(self, instance_id: InstanceId) -> str | None:
        """Why the machine can no longer train (None while it is fine)."""
        ...

    def wait_ready(
        self,
        instance_id: InstanceId,
        check_ssh: SshCheck,
        timeout_s: float = 900,
        poll_s: float | None = None,
        on_stage: Callable[[str], None] = ...,
    ) -> tuple[str, int]:
        """Block until the machine runs and SSH logs in (check_ssh passes); its (host, port)."""
        ...

    def release(self, instance_id: InstanceId) -> float | None:
        """Destroy and confirm it is gone; idempotent. Returns when the provider took our destroy (the
        lease's cost ends there), or None when the machine was gone already: its dead-man switch or the
        provider ended it, and the lease ends at its last heartbeat plus the switch's window (remote.py)."""
        ...

    def owned(self) -> list[Rented]:
        """Every machine carrying loraflow's label (to adopt after a crash, or to reap)."""
        ...


def env_seconds(name: str, default: float) -> float:
    """A pace in seconds from the environment (the tests' emulators poll faster), else the default."""
    try:
        return max(0.01, float(os.environ.get(name) or default))
    except ValueError:
        raise UserInputError(f"{name} must be a number of seconds", fix=f"unset it (default {default:.0f} s)") \
            from None


def label_for(job_id: str) -> str:
    return LABEL_PREFIX + job_id


def port_open(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def once(previous: str, stage: str, on_stage: Callable[[str], None]) -> str:
    """Report a waiting stage only when it changes."""
    if stage != previous:
        on_stage(stage)
    return stage


# What a provider reads from one status call while a machine starts: why it can never start (None while it
# may), its SSH address once it has one, and what is being waited for until then.
Progress = tuple[str | None, tuple[str, int] | None, str]


def wait_for_ssh(
    what: str,
    progress: Callable[[], Progress],
    check_ssh: SshCheck,
    timeout_s: float,
    poll_s: float,
    on_stage: Callable[[str], None],
    port_check: Callable[[str, int], bool] = lambda host, port: port_open(host, port),
) -> tuple[str, int]:
    """The wait every provider does: the machine runs with an address, then the TCP port opens, then SSH
    logs in (and whatever check_ssh runs passes). One status call per `poll_s`. `port_check` is the port's
    probe (a machine reached through a proxy has no port of its own to probe)."""
    deadline = time.monotonic() + timeout_s
    stage = ""
    while time.monotonic() < deadline:
        failed, address, waiting = progress()
        if failed:
            raise LoraflowError(f"{what} {failed}")
        if address is None:
            stage = once(stage, waiting, on_stage)
        elif not port_check(*address):
            stage = once(stage, f"waiting for SSH port {address[0]}:{address[1]}", on_stage)
        else:
            stage = once(stage, "checking SSH login", on_stage)
            try:
                check_ssh(*address)
                return address
            except LoraflowError:
                pass
        time.sleep(poll_s)
    raise LoraflowError(f"{what} was not ready within {timeout_s:.0f} s")


def destroy_confirmed(
    destroy: Callable[[], object], gone: Callable[[], bool], tries: int, fix: str, what: str
) -> float | None:
    """Destroy, then confirm by a status read that it is gone, a few times; the destroy call's own errors are
    read past (a machine already gone refuses a second destroy): only the status read decides. Returns when
    a destroy call was taken (its answer came, and was not False, "it was gone already"): the machine's
    billing ends there, not after the confirming reads. None: it was gone before any destroy of ours."""
    taken: float | None = None
    for attempt in range(tries):
        with contextlib.suppress(LoraflowError):
            if destroy() is not False:
                taken = taken or time.time()
        if gone():
            return taken
        time.sleep(1 + attempt)
    raise LoraflowError(f"{what} could not be confirmed destroyed", fix=fix)
