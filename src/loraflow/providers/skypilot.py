"""The SkyPilot provider: any of SkyPilot's clouds, a Kubernetes context or a Slurm cluster
(`compute.infra`), leased with the same verbs as Vast.ai and RunPod (providers/base.py): offers with a
price, rent, wait until reachable, release, orphans by name, and the host's own dead-man switch.

SkyPilot provisions; loraflow trains. The cluster runs one SkyPilot job, the dead-man switch (the watcher
of providers/vast_watch.py, see skypilot_task.py), and loraflow reaches the head node over SSH with its own
key to upload, train, follow and copy back as on any host. loraflow keeps its own recovery (checkpoints
copied back while training, the budget, the watcher, the move to a new host from the newest checkpoint)
rather than SkyPilot's managed jobs: those restart a task from its start on a controller cluster that needs
a cloud of its own, and know nothing of a LoRA's checkpoints or of a budget (docs/remote.md says more).

Prices come from SkyPilot's catalog (`sky.catalog.list_accelerators`, the same tables its optimizer
uses; for a Slurm cluster, its nodes' GPUs as `sinfo` tells them, at the price its config gives, 0 unless set).

A Slurm allocation has no SSH address of its own: SkyPilot reaches it through the login node, and a person's
`ssh <cluster>` goes through SkyPilot's API server, which starts `srun ... sshd -i` inside the allocation.
loraflow's SSH takes the same route (`ssh_proxy`, the ProxyCommand SkyPilot writes for the cluster), with its
own key, which the task's setup adds to the login's authorized_keys (the file that sshd reads). Kubernetes is
still refused: its pods are reached through a port-forward this provider does not yet set up.
"""

from __future__ import annotations

import importlib
import os
import secrets
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from loraflow import paths
from loraflow.catalog import gpu_table
from loraflow.errors import LoraflowError, UserInputError
from loraflow.providers.base import (
    LABEL_PREFIX,
    InstanceId,
    MachineNeeds,
    Needs,
    Progress,
    RankedOffer,
    Rented,
    SshCheck,
    destroy_confirmed,
    port_open,
    wait_for_ssh,
)
from loraflow.providers.estimate import estimate
from loraflow.providers.skypilot_task import (
    CLUSTER_PREFIX,
    DOCKER_SSH_PORT,
    TaskPlan,
    cluster_name,
    job_of,
)
from loraflow.providers.vast_watch import watch_script
from loraflow.providers.vastai import poll_interval
from loraflow.spec import TrainSpec

# SkyPilot's accelerator names -> the throughput table's rows (catalog/gpus.yaml, Vast.ai's names).
TABLE_ROW = {
    "RTX3090": "RTX 3090",
    "RTX4090": "RTX 4090",
    "RTX5090": "RTX 5090",
    "A6000": "RTX A6000",
    "RTX6000-Ada": "RTX 6000Ada",
    "L40S": "L40S",
    "L4": "L4",
    "A10G": "A10G",
    "A10": "A10",
    "A100": "A100 SXM4",
    "A100-80GB": "A100 SXM4",
    "H100": "H100 SXM",
    "H100-NVL": "H100 NVL",
    "H200": "H200",
    "V100": "Tesla V100",
}
OWN_INFRA = ("kubernetes", "slurm", "ssh")  # the user's own machines: no cloud region, reached through a proxy
REFUSED_INFRA = ("kubernetes", "ssh")  # a proxy loraflow's SSH does not go through yet (Slurm's it does)
API_ENV = "LORAFLOW_SKYPILOT_API"  # `module:factory` of a stand-in for SkyApi (the tests' runner processes)
# The watcher's "self-destroy" on SkyPilot: it ends its job, and autostop (down, waiting for jobs) tears the
# cluster down with SkyPilot's own credentials; the host needs none of loraflow's.
SKY_END = 'echo "$(date -u) the watcher job ends: SkyPilot autostop tears the cluster down"'


def sky_name(name: str) -> str:
    """A GPU name as SkyPilot spells it: 'RTX 4090' (Vast.ai's, the table's) -> 'RTX4090'; SkyPilot's own
    names pass through."""
    for sky, row in TABLE_ROW.items():
        if name == row and sky != "A100":
            return sky
    return name.replace(" ", "")


def infra_cloud(infra: str | None) -> str | None:
    """The cloud part of `compute.infra` ('aws/us-east-1' -> 'aws', 'k8s/my-context' -> 'kubernetes')."""
    if not infra:
        return None
    head = infra.split("/", 1)[0].lower()
    return "kubernetes" if head == "k8s" else head


def infra_region(infra: str | None) -> str | None:
    parts = (infra or "").split("/")
    return parts[1] if len(parts) > 1 and infra_cloud(infra) not in OWN_INFRA and parts[1] != "*" else None


def catalog_region(infra: str | None) -> str | None:
    """What SkyPilot's catalog filters regions by: a cloud's region, or the Slurm cluster's name
    ('slurm/mycluster' -> 'mycluster', as in ~/.slurm/config)."""
    parts = (infra or "").split("/")
    if infra_cloud(infra) == "slurm":
        return parts[1] if len(parts) > 1 and parts[1] not in ("", "*") else None
    return infra_region(infra)


def _vram(name: str) -> float | None:
    return gpu_table().get(TABLE_ROW.get(name, ""), {}).get("vram_gb")


def catalog_rows(api: Any, spec: TrainSpec, vram_gb: float) -> list[dict[str, Any]]:
    """The catalog's instance types with the job's GPUs, cheapest region of each: what SkyPilot's optimizer
    chooses among."""
    cloud = infra_cloud(spec.compute.infra)
    if cloud in REFUSED_INFRA:
        # SkyPilot reaches these nodes through a proxy (Kubernetes: a port-forward) that loraflow's SSH does not
        # take yet; the head node's address there is a pod IP. Refused rather than training outside them.
        raise UserInputError(
            f"compute.infra {spec.compute.infra}: loraflow cannot reach SkyPilot's {cloud} nodes over SSH yet "
            "(SkyPilot reaches them through a proxy)",
            fix="use a cloud (aws, gcp, azure, lambda...) as compute.infra, or compute.provider: ssh for a "
            "machine of your cluster",
        )
    if cloud is None:
        raise UserInputError(
            "compute.provider: skypilot prices offers on one infra",
            fix="set compute.infra, e.g. aws or gcp/us-central1",
        )
    names = [sky_name(n) for n in spec.compute.gpu.names]
    rows = []
    spot = spec.compute.skypilot.use_spot
    for row in api.accelerators(cloud, names, catalog_region(spec.compute.infra), spec.compute.gpus, spot):
        memory = row.get("vram_gb") or _vram(row["accelerator"])
        if memory is not None and memory < vram_gb * 0.95:
            continue
        where = f"{row['cloud']}/{row['region'] or '-'}/{row['instance_type']}"
        rows.append({**row, "vram_gb": memory, "spot": spot, "id": where + (" spot" if spot else "")})
    return rows


def offer_label(row: dict[str, Any], gpus: int) -> str:
    """'1x H100 (lambda/us-east-1)': the machine as the estimate table shows it ('1x H100 spot (aws/...)')."""
    where = row["cloud"] + (f"/{row['region']}" if row.get("region") else "")
    return f"{gpus}x {row['accelerator']}{' spot' if row.get('spot') else ''} ({where})"


class SkyPilotProvider:
    """SkyPilot behind loraflow's provider verbs; instance ids are cluster names (`loraflow-<job id>--<tag>`)."""

    name = "skypilot"
    title = "SkyPilot"

    def __init__(self, api: Any = None, needs: Needs | None = None) -> None:
        self._api = api
        self._needs = needs
        self._key_file = paths.home() / "skypilot" / "loraflow.pub"
        self._launches: dict[str, str] = {}  # cluster -> its launch request id, while this process waits
        self._user = "root"
        self._proxy: list[str] | None = None

    @classmethod
    def quick(cls, needs: Needs | None = None) -> SkyPilotProvider:
        return cls(needs=needs)

    @property
    def api(self) -> Any:
        """SkyApi (SkyPilot itself), or the stand-in LORAFLOW_SKYPILOT_API names (`module:factory`), which is
        how the tests' runner processes rent from one."""
        if self._api is None:
            named = os.environ.get(API_ENV)
            if named:
                module, _, factory = named.partition(":")
                self._api = getattr(importlib.import_module(module), factory)()
            else:
                from loraflow.providers.skypilot_api import SkyApi

                self._api = SkyApi()
        return self._api

    @property
    def ssh_user(self) -> str:
        """The head node's login, as SkyPilot's cluster handle names it (ubuntu on AWS, gcpuser on GCP, the
        image's user for a docker image); known once `wait_ready` has found the address."""
        return self._user

    @property
    def ssh_proxy(self) -> list[str] | None:
        """The command SSH talks through to the cluster's head node (a Slurm allocation: SkyPilot's own route),
        None for a cloud VM's direct address; known once `wait_ready` has found the address."""
        return self._proxy

    def needs(self, spec: TrainSpec) -> MachineNeeds:
        if self._needs is None:
            raise TypeError("renting needs the engine's requirements: SkyPilotProvider(needs=engines.engine_needs)")
        return self._needs(spec)

    # --- offers with a price ---------------------------------------------------------------------

    def offers(self, spec: TrainSpec) -> list[RankedOffer]:
        """Cheapest expected job first (price x predicted time, as on Vast.ai), from SkyPilot's catalog."""
        vram = spec.compute.gpu.min_vram_gb or self.needs(spec).min_vram_gb
        cap = spec.compute.gpu.max_usd_per_hour
        ranked = []
        for row in catalog_rows(self.api, spec, vram):
            if cap and row["price"] > cap:
                continue
            est = estimate(spec, TABLE_ROW.get(row["accelerator"], "RTX 4090"), row["price"])
            ranked.append(RankedOffer(row, replace(est, gpu=offer_label(row, spec.compute.gpus)), self.name))
        ranked.sort(key=lambda r: (r.estimate.cost_usd, r.usd_per_hour))
        if not ranked:
            raise UserInputError(
                f"SkyPilot's catalog has no {spec.compute.gpus}-GPU machine with {vram} GB per GPU on "
                f"{spec.compute.infra}" + (" at a spot price" if spec.compute.skypilot.use_spot else ""),
                fix="relax compute.gpu (names, max_usd_per_hour, min_vram_gb) or choose another compute.infra",
            )
        return ranked

    # --- rent --------------------------------------------------------------------------------------

    def ensure_ssh_key(self, public_key: str) -> None:
        """loraflow's public key, in a file the task mounts and its setup adds to authorized_keys."""
        self._key_file.parent.mkdir(parents=True, exist_ok=True)
        self._key_file.write_text(public_key.strip() + "\n")

    def plan(
        self, spec: TrainSpec, job_id: str, offer: RankedOffer, max_hours: float | None = None, cluster: str = ""
    ) -> TaskPlan:
        row, infra = offer.offer, spec.compute.infra
        if row.get("region") and infra_region(infra) is None and infra_cloud(infra) not in OWN_INFRA:
            infra = f"{row['cloud']}/{row['region']}"  # rent where the price was quoted
        return TaskPlan(
            name=cluster or cluster_name(job_id),
            accelerators=[row["accelerator"]],
            gpus=spec.compute.gpus,
            infra=infra,
            disk_gb=spec.compute.gpu.disk_gb,
            # On Slurm the job runs in the allocation itself (compute.python, compute.setup): a container there
            # needs the cluster's pyxis/enroot and is reached by SkyPilot another way.
            image=None if infra_cloud(infra) == "slurm" else self.needs(spec).image,
            use_spot=spec.compute.skypilot.use_spot,
            max_usd_per_hour=spec.compute.gpu.max_usd_per_hour,
            key_file=str(self._key_file),
            watch=watch_script(spec.compute.heartbeat_minutes * 60, max_hours, SKY_END),
            envs={"LORAFLOW_JOB": job_id},
        )

    def create(
        self,
        spec: TrainSpec,
        job_id: str,
        ranked: list[RankedOffer],
        on_attempt: Callable[[str], None] = lambda _m: None,
        max_hours: float | None = None,
    ) -> tuple[InstanceId, RankedOffer]:
        """Start the launch of the best offer (SkyPilot's API server provisions; `wait_ready` waits for it);
        the cluster's name is the instance id."""
        chosen = ranked[0]
        cluster = cluster_name(job_id, secrets.token_hex(2))
        plan = self.plan(spec, job_id, chosen, max_hours, cluster)
        on_attempt(f"launching {chosen.gpu} through SkyPilot as cluster {cluster}")
        self._launches[cluster] = self.api.launch(plan, cluster)
        return cluster, chosen

    # --- wait, address -----------------------------------------------------------------------------

    def address(self, cluster: str) -> tuple[str, int, str] | None:
        """The head node's SSH address and login (host, port, user) from SkyPilot's cluster handle; None
        while it has none."""
        row = self.api.status(cluster)
        handle = row.get("handle") if row else None
        if row is None or handle is None or row.get("status") != "UP":
            return None
        ips = getattr(handle, "cached_external_ips", None) or []
        ports = getattr(handle, "cached_external_ssh_ports", None) or [22]
        docker = getattr(handle, "docker_user", None)
        user = docker or getattr(handle, "ssh_user", None)
        if str(getattr(getattr(handle, "launched_resources", None), "cloud", "")).lower() == "slurm":
            # The login node's address names the host (its pinned key); SSH goes through SkyPilot's route, whose
            # `sshd -i` runs as the allocation's user: the Slurm user SkyPilot submits as, else the login's.
            config = getattr(getattr(handle, "cached_cluster_info", None), "provider_config", None) or {}
            user = config.get("slurm_user") or (config.get("ssh") or {}).get("user") or user
            if not ips or not user:
                return None
            self._proxy = self.api.ssh_proxy(cluster)
            return str(ips[0]), int(ports[0]), str(user)
        if not ips or not user:
            return None
        # With a docker image SkyPilot runs sshd in the container (host network) on DOCKER_SSH_PORT, opened
        # by the task; the VM's own port 22 is the host's.
        return str(ips[0]), DOCKER_SSH_PORT if docker else int(ports[0]), str(user)

    def _launch_state(self, cluster: str) -> str:
        """The launch request's state; SUCCEEDED when this process did not start it (the cluster's own
        status then says whether it is up)."""
        request = self._launches.get(cluster)
        if request is None:
            return "SUCCEEDED"
        state = self.api.request_state(request)
        if state in ("FAILED", "CANCELLED"):
            try:
                self.api.result(request)
            except Exception as exc:
                raise LoraflowError(f"SkyPilot could not launch {cluster}: {exc}") from exc
            raise LoraflowError(f"SkyPilot's launch of {cluster} ended {state}")
        return state

    def wait_ready(
        self,
        instance_id: InstanceId,
        check_ssh: SshCheck,
        timeout_s: float = 900,
        poll_s: float | None = None,
        on_stage: Callable[[str], None] = lambda _s: None,
    ) -> tuple[str, int]:
        """The launch done, the cluster UP with an address, its SSH port open, loraflow's key let in (the wait
        every provider does, providers/base.py); the login is the one SkyPilot's handle names."""
        cluster = str(instance_id)

        def progress() -> Progress:
            state = self._launch_state(cluster)  # raises with SkyPilot's reason when the launch failed
            found = self.address(cluster) if state in ("SUCCEEDED", "GONE") else None
            if found is None:
                return None, None, f"SkyPilot is provisioning {cluster} ({state.lower()})"
            self._user = found[2]
            return None, (found[0], found[1]), ""

        poll_s = poll_interval() if poll_s is None else poll_s
        return wait_for_ssh(
            f"SkyPilot cluster {cluster}", progress, check_ssh, timeout_s, poll_s, on_stage,
            port_check=lambda host, port: self._proxy is not None or port_open(host, port),
        )

    # --- health, release, orphans ------------------------------------------------------------------

    def dead_reason(self, instance_id: InstanceId) -> str | None:
        """Why the cluster can no longer train: gone, not UP, or its watcher job ended (autostop is then
        about to tear it down)."""
        cluster = str(instance_id)
        row = self.api.status(cluster)
        if row is None:
            return "the SkyPilot cluster is gone (torn down)"
        if row.get("status") != "UP":
            return f"the SkyPilot cluster is {row.get('status')}"
        jobs = self.api.queue(cluster)
        if jobs and not any(str(j["status"]) in ("RUNNING", "PENDING", "SETTING_UP", "INIT") for j in jobs):
            return "the host's watcher job ended (the dead-man switch fired or failed)"
        return None

    def release(self, instance_id: InstanceId, tries: int = 3) -> float | None:
        """Tear down and confirm it is gone; idempotent. A launch this process started is cancelled first.
        When SkyPilot took the down (None: the cluster was gone already, autostop or the cloud ended it)."""
        cluster = str(instance_id)
        request = self._launches.pop(cluster, None)
        if request and self.api.request_state(request) in ("PENDING", "RUNNING"):
            self.api.cancel(request)

        def down() -> object:
            try:
                return self.api.down(cluster)  # False: SkyPilot knew no such cluster
            except LoraflowError:
                raise
            except Exception as exc:  # SkyPilot's own errors: read past, the status read decides
                raise LoraflowError(f"sky down {cluster}: {exc}") from exc

        return destroy_confirmed(
            down, lambda: self.api.status(cluster) is None, tries,
            f"run `sky down {cluster}`, or `loraflow reap`", f"SkyPilot cluster {cluster}",
        )

    def owned(self) -> list[Rented]:
        """loraflow's clusters: named `loraflow-<job id>`, labelled `loraflow:<job id>` as on every provider."""
        return [
            Rented(
                row["name"],
                LABEL_PREFIX + job_of(str(row["name"])),
                row.get("status"),
                row.get("resources_str"),
                _hourly(row.get("handle")),
                float(row["launched_at"]) if row.get("launched_at") else None,
            )
            for row in self.api.clusters(CLUSTER_PREFIX)
        ]

    def watch_log(self, instance_id: InstanceId, tail: int = 50) -> str:
        """The watcher job's log, for a person asking why a host went away."""
        jobs = self.api.queue(str(instance_id))
        return self.api.logs(str(instance_id), jobs[0]["job_id"] if jobs else None, tail)


def _hourly(handle: Any) -> float:
    """What the cluster costs an hour, as SkyPilot prices its launched resources (0 when it cannot say)."""
    try:
        return float(handle.get_hourly_price()) if handle is not None else 0.0
    except Exception:
        return 0.0
