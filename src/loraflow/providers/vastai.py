"""The Vast.ai provider: pick the offer that makes this job cheapest, rent it, wait until it can
train, and always destroy it.

Every instance carries the label `loraflow:<job id>` and is recorded in the job before it is awaited,
so a crashed orchestrator finds it again (by the record, or by label) instead of renting another, and
`loraflow reap` can destroy any instance no live job owns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
    env_seconds,
    label_for,
    wait_for_ssh,
)
from loraflow.providers.estimate import estimate
from loraflow.providers.vast_client import VastClient, VastError
from loraflow.providers.vast_watch import watch_script
from loraflow.spec import TrainSpec

__all__ = ["LABEL_PREFIX", "MachineNeeds", "RankedOffer", "VastProvider", "label_for", "offer_query", "rank"]

DEAD = {"exited", "offline", "unknown", "stopped", "frozen"}
# Vast's docs poll an instance's status every 10 s while it starts; the show endpoint allows about one call
# per 2 s per key (a 429 with Retry-After past that). LORAFLOW_VAST_POLL_S changes it (the tests' emulator).
POLL_ENV, POLL_S = "LORAFLOW_VAST_POLL_S", 10.0
# What the dead-man switch runs to destroy its own instance: the instance-scoped key Vast.ai puts in the
# container (CONTAINER_API_KEY, which can act on CONTAINER_ID only) against the API base create passed.
SELF_DESTROY = (
    'curl -sS -f -X DELETE -H "Authorization: Bearer $CONTAINER_API_KEY" '
    '"${LORAFLOW_VAST_API:-https://console.vast.ai}/api/v0/instances/$CONTAINER_ID/"'
)


def poll_interval() -> float:
    """Seconds between status calls while an instance starts (LORAFLOW_VAST_POLL_S, default 10)."""
    return env_seconds(POLL_ENV, POLL_S)


def offer_query(spec: TrainSpec, req: MachineNeeds) -> dict[str, Any]:
    """The search filters: the job's number of GPUs with enough memory, disk and CUDA, on reliable verified
    hosts. `gpu_frac` is not filtered: Vast defines it as the offer's share of the machine's GPUs (one GPU of
    an 8-GPU server is 0.125), and most H100/A100/L40S offers are such single GPUs of multi-GPU hosts."""
    gpu = spec.compute.gpu
    vram = gpu.min_vram_gb or req.min_vram_gb
    query: dict[str, Any] = {
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "external": {"eq": False},
        "num_gpus": {"eq": spec.compute.gpus},  # N GPUs of one machine: dph_total prices all N
        "gpu_ram": {"gte": vram * 1000 * 0.95},
        "disk_space": {"gte": gpu.disk_gb},
        "reliability": {"gte": gpu.min_reliability},
        "direct_port_count": {"gte": 1},
        "inet_down": {"gte": 200},
        "order": [["dph_total", "asc"]],
        "type": "on-demand",
        "allocated_storage": gpu.disk_gb,
        "limit": 200,
    }
    if req.cuda:
        query["cuda_max_good"] = {"gte": float(req.cuda)}
    if gpu.verified_only:
        query["verified"] = {"eq": True}
    if gpu.names:
        query["gpu_name"] = {"in": gpu.names}
    if gpu.max_usd_per_hour:
        query["dph_total"] = {"lte": gpu.max_usd_per_hour}
    if gpu.region:
        query["geolocation"] = {"in": [c.strip() for c in gpu.region.split(",")]}
    return query


def rank(spec: TrainSpec, offers: list[dict[str, Any]]) -> list[RankedOffer]:
    """Cheapest expected job first; ties go to the more reliable host."""
    ranked = []
    for o in offers:
        est = estimate(
            spec,
            str(o.get("gpu_name")),
            float(o.get("dph_total") or 0),
            float(o.get("inet_down") or 200),
            float(o.get("inet_up") or 100),
            offer_id=int(o["id"]),
        )
        ranked.append(RankedOffer(o, est, "vastai"))
    ranked.sort(key=lambda r: (r.estimate.cost_usd, -float(r.offer.get("reliability") or 0)))
    return ranked


def ssh_address(row: dict[str, Any]) -> tuple[str, int] | None:
    """Direct port when mapped, else the proxy (whose port is +1 for jupyter runtypes)."""
    ports = row.get("ports") or {}
    mapped = ports.get("22/tcp") if isinstance(ports, dict) else None
    if mapped and row.get("public_ipaddr"):
        return str(row["public_ipaddr"]).strip(), int(mapped[0]["HostPort"])
    if row.get("ssh_host") and row.get("ssh_port"):
        bump = 1 if "jupyter" in str(row.get("image_runtype") or "") else 0
        return str(row["ssh_host"]).strip(), int(row["ssh_port"]) + bump
    return None


class VastProvider:
    name = "vastai"
    title = "Vast.ai"
    ssh_user = "root"

    def __init__(self, client: VastClient | None = None, needs: Needs | None = None) -> None:
        self.client = client or VastClient()
        self._needs = needs

    @classmethod
    def quick(cls, needs: Needs | None = None) -> VastProvider:
        """For read-only questions a person waits on: two tries of 10 s, then a message naming the host
        (renting and destroying keep the client's patient retries)."""
        return cls(VastClient(tries=2, timeout_s=10), needs=needs)

    def needs(self, spec: TrainSpec) -> MachineNeeds:
        if self._needs is None:
            raise TypeError("renting needs the engine's requirements: VastProvider(needs=engines.engine_needs)")
        return self._needs(spec)

    def offers(self, spec: TrainSpec) -> list[RankedOffer]:
        ranked = rank(spec, self.client.search_offers(offer_query(spec, self.needs(spec))))
        if not ranked:
            raise UserInputError(
                "no Vast.ai offer matches the job's requirements",
                fix="relax compute.gpu (names, max_usd_per_hour, min_reliability, region, verified_only)",
            )
        return ranked

    def ensure_ssh_key(self, public_key: str) -> None:
        """Account keys are baked into new instances only, so this must happen before create."""
        if public_key.strip() not in self.client.ssh_keys():
            self.client.add_ssh_key(public_key.strip())

    def create(
        self,
        spec: TrainSpec,
        job_id: str,
        ranked: list[RankedOffer],
        on_attempt: Callable[[str], None] = lambda _m: None,
        max_hours: float | None = None,
    ) -> tuple[InstanceId, RankedOffer]:
        """Rent the best offer still free; a snatched one (404/410 no_such_ask) moves down the list."""
        req = self.needs(spec)
        body = {
            "image": req.image or "pytorch/pytorch:latest",
            "disk": float(spec.compute.gpu.disk_gb),
            "label": label_for(job_id),
            "runtype": "ssh_direc ssh_proxy",
            "cancel_unavail": True,
            # The API base the instance's own dead-man switch calls to destroy itself (see vast_watch.py).
            "env": {"LORAFLOW_JOB": job_id, "LORAFLOW_VAST_API": str(self.client.http.base_url).rstrip("/")},
            "onstart": watch_script(spec.compute.heartbeat_minutes * 60, max_hours, SELF_DESTROY),
        }
        for candidate in ranked[:10]:
            try:
                answer = self.client.create_instance(candidate.id, body)
            except VastError as exc:
                if exc.offer_gone:
                    on_attempt(f"offer {candidate.id} ({candidate.offer.get('gpu_name')}) was taken; trying the next")
                    continue
                stray = exc.body.get("new_contract")
                if stray:  # created stopped with an error (bid too low): never leave it billing storage
                    self.client.destroy_instance(int(stray))
                raise
            return int(answer["new_contract"]), candidate
        raise LoraflowError(
            "every matching Vast.ai offer was taken before it could be rented", fix="try again in a minute"
        )

    def status(self, instance_id: InstanceId) -> dict[str, Any] | None:
        return self.client.show_instance(instance_id)

    def dead_reason(self, instance_id: InstanceId) -> str | None:
        """Why an instance can no longer train (None while it is fine)."""
        row = self.status(instance_id)
        if row is None:
            return "the instance is gone (destroyed or reclaimed)"
        if row.get("intended_status") == "stopped" or (
            row.get("cur_state") == "stopped" and row.get("next_state") == "stopped"
        ):
            return "the instance was stopped (outbid or out of credit)"
        if row.get("actual_status") in DEAD:
            return f"the instance is {row.get('actual_status')}"
        return None

    def wait_ready(
        self,
        instance_id: InstanceId,
        check_ssh: SshCheck,
        timeout_s: float = 900,
        poll_s: float | None = None,
        on_stage: Callable[[str], None] = lambda _s: None,
    ) -> tuple[str, int]:
        """Running with an address, then the TCP port, then SSH auth (and whatever check_ssh runs). The status
        is asked every `poll_s` (default: poll_interval(), Vast's documented 10 s), never faster than the
        endpoint allows; a 429 is waited out by the client (its Retry-After)."""

        def progress() -> Progress:
            row = self.status(instance_id)
            if row is None:
                return "disappeared while starting", None, ""
            status = row.get("actual_status")
            if status in DEAD or "oci runtime" in str(row.get("status_msg") or "").lower():
                return f"failed to start: {status} {row.get('status_msg')}", None, ""
            address = ssh_address(row) if status == "running" else None
            return None, address, "waiting for the instance to run"

        poll_s = poll_interval() if poll_s is None else poll_s
        return wait_for_ssh(f"instance {instance_id}", progress, check_ssh, timeout_s, poll_s, on_stage)

    def release(self, instance_id: InstanceId, tries: int = 5) -> float | None:
        """Destroy and confirm it is gone; idempotent. Returns when the API took our destroy (billing ends
        there, not after the confirming status calls), or None when the instance was gone already (its own
        dead-man switch, or the provider, ended it at a time the API no longer tells)."""
        return destroy_confirmed(
            lambda: self.client.destroy_instance(instance_id),  # False: it was gone already
            lambda: self.status(instance_id) is None,
            tries,
            "destroy it by hand in the Vast.ai console, or run `loraflow reap`",
            f"Vast.ai instance {instance_id}",
        )

    def owned(self) -> list[Rented]:
        return [
            Rented(
                int(r["id"]),
                str(r.get("label") or ""),
                r.get("actual_status"),
                r.get("gpu_name"),
                float(r.get("dph_total") or 0),
                float(r["start_date"]) if r.get("start_date") else None,
            )
            for r in self.client.list_instances(LABEL_PREFIX)
        ]
