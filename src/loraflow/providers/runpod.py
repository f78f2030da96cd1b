"""The RunPod provider, through RunPod's own `runpod` SDK (GraphQL; RUNPOD_API_BASE_URL points it elsewhere).

The same verbs as Vast.ai (providers/base.py): each GPU type RunPod prices (`get_gpu`: on-demand and spot,
secure and community cloud) is an offer, ranked by what the whole job costs on it; `create_pod` rents the
cheapest with `22/tcp` on a public IP and loraflow's key in `PUBLIC_KEY`; the SSH address is the pod's
runtime port mapping for 22; `terminate_pod` releases it. Spot pods are rented with a bid through the SDK's
own GraphQL call (`podRentInterruptable`, which `create_pod` does not cover).

Every pod is named `loraflow:<job id>` (orphans are found by that prefix) and starts the dead-man switch
(vast_watch.py) before the image's own start script. The SDK writes env values and dockerArgs into its
GraphQL text without escaping, so the watcher travels base64 in one env value, and dockerArgs holds no
double quote.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
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
from loraflow.providers.vast_watch import watch_script
from loraflow.spec import TrainSpec

API_ENV, DEFAULT_API = "RUNPOD_API_BASE_URL", "https://api.runpod.io"
CONFIG = Path("~/.runpod/config.toml")  # where `runpod config` keeps the key
POLL_ENV, POLL_S = "LORAFLOW_RUNPOD_POLL_S", 5.0
DISK_USD_GB_MONTH = 0.10  # container disk and volume while the pod runs (RunPod's pricing page)
IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"  # has sshd and /start.sh
DEAD = {"EXITED", "TERMINATED"}
# The pod's start: run the watcher (base64 in LORAFLOW_WATCH_B64), then the image's own start script (RunPod's
# images: sshd with PUBLIC_KEY); an image without one gets PUBLIC_KEY authorized and sshd started, installed
# first when missing, as RunPod's SSH guide does for custom images. No double quotes (see above).
START = (
    "bash -c 'echo $LORAFLOW_WATCH_B64 | base64 -d | sh; if [ -x /start.sh ]; then exec /start.sh; fi; "
    "mkdir -p ~/.ssh && echo $PUBLIC_KEY >> ~/.ssh/authorized_keys && chmod 700 ~/.ssh && "
    "chmod 600 ~/.ssh/authorized_keys; command -v sshd || (apt-get update -qq && "
    "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server); mkdir -p /run/sshd; "
    "ssh-keygen -A; $(command -v sshd || echo /usr/sbin/sshd); exec sleep infinity'"
)
# What the watcher runs to terminate its own pod: the pod-scoped key RunPod puts in every pod
# (RUNPOD_API_KEY) on RUNPOD_POD_ID. GraphQL answers errors with HTTP 200, so the body is read too.
SELF_DESTROY = (
    "{ r=$(printf '{\"query\":\"mutation { podTerminate(input: {podId: \\\\\"%s\\\\\"}) }\"}' \"$RUNPOD_POD_ID\" | "
    "curl -sS -f -X POST -H 'Content-Type: application/json' -H \"Authorization: Bearer $RUNPOD_API_KEY\" "
    "--data-binary @- \"${LORAFLOW_RUNPOD_API:-https://api.runpod.io}/graphql\") && echo \"$r\" && "
    "! echo \"$r\" | grep -q '\"errors\"'; }"
)
# RunPod's answer when the GPU type has no free machine left (like a snatched offer on Vast.ai).
NO_CAPACITY = ("no longer any instances available", "not enough free gpus", "no instances available")
RUNPOD_POD_INPUT = (  # the create_pod fields, for the spot mutation the SDK has no function for
    "name", "imageName", "gpuTypeId", "cloudType", "gpuCount", "containerDiskInGb", "volumeInGb",
    "volumeMountPath", "ports", "dockerArgs", "env", "supportPublicIp", "startSsh", "minVcpuCount", "minMemoryInGb",
)  # fmt: skip


def poll_interval() -> float:
    """Seconds between status calls while a pod starts (LORAFLOW_RUNPOD_POLL_S, default 5)."""
    return env_seconds(POLL_ENV, POLL_S)


def _sdk() -> Any:
    try:
        import runpod
    except ImportError:
        raise UserInputError(
            "compute.provider: runpod needs RunPod's SDK", fix='pip install "loraflow[cloud]" (or: pip install runpod)'
        ) from None
    return runpod


class RunPodProvider:
    name = "runpod"
    title = "RunPod"
    ssh_user = "root"

    def __init__(self, needs: Needs | None = None, api_key: str | None = None, tries: int = 4) -> None:
        self._needs = needs
        self._key = api_key
        self.tries = tries
        self._public_key = ""

    @classmethod
    def quick(cls, needs: Needs | None = None) -> RunPodProvider:
        return cls(needs=needs, tries=2)

    # --- the SDK ---------------------------------------------------------------------------------

    def call(self, verb: str, *args: Any, **kwargs: Any) -> Any:
        """One SDK call with the account's key; connection trouble and 5xx pages are tried again, and every
        failure ends as a LoraflowError naming RunPod (the SDK raises its own and requests' errors)."""
        key = self._key or os.environ.get("RUNPOD_API_KEY")
        # The SDK's own credentials file (`runpod config`) is read when it is imported: a heavy import, so
        # only when there is such a file.
        sdk = _sdk() if key or CONFIG.expanduser().exists() else None
        key = key or (sdk.api_key if sdk else None)
        if not key or sdk is None:
            raise UserInputError(
                "RunPod needs an API key", fix="set RUNPOD_API_KEY, or run `runpod config` (RunPod's own CLI)"
            )
        sdk.api_key = key
        fn = sdk.api.graphql.run_graphql_query if verb == "graphql" else getattr(sdk, verb)
        for attempt in range(self.tries):
            try:
                return fn(*args, **kwargs)
            except sdk.error.AuthenticationError:
                raise UserInputError("RunPod refused the API key", fix="check RUNPOD_API_KEY") from None
            except sdk.error.QueryError as exc:
                raise RunPodError(str(exc)) from None
            except OSError as exc:  # requests' errors (a 5xx page that is not JSON too) are OSErrors
                if attempt + 1 >= self.tries:
                    raise LoraflowError(
                        f"RunPod's API ({os.environ.get(API_ENV, DEFAULT_API)}) did not answer: {type(exc).__name__}",
                        fix="try again in a minute",
                    ) from None
                time.sleep(min(8.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    # --- offers ----------------------------------------------------------------------------------

    def needs(self, spec: TrainSpec) -> MachineNeeds:
        if self._needs is None:
            raise TypeError("renting needs the engine's requirements: RunPodProvider(needs=engines.engine_needs)")
        return self._needs(spec)

    def offers(self, spec: TrainSpec) -> list[RankedOffer]:
        """Each GPU type with enough memory, on each cloud the spec allows, priced for its N GPUs."""
        gpu = spec.compute.gpu
        vram = gpu.min_vram_gb or self.needs(spec).min_vram_gb
        types = [t for t in self.call("get_gpus") if float(t.get("memoryInGb") or 0) >= vram * 0.95]
        if gpu.names:
            wanted = {n.lower() for n in gpu.names}
            types = [t for t in types if {str(t.get("displayName")).lower(), str(t["id"]).lower()} & wanted]
        rows = []
        for t in types:
            detail = self.call("get_gpu", t["id"], spec.compute.gpus)
            rows += offer_rows(spec, detail)
        if gpu.max_usd_per_hour:
            rows = [r for r in rows if r["usd_per_hour"] <= gpu.max_usd_per_hour]
        ranked = rank(spec, rows)
        if not ranked:
            raise UserInputError(
                "no RunPod GPU type fits the job's requirements now",
                fix="relax compute.gpu (names, max_usd_per_hour, min_vram_gb) or compute.runpod.cloud",
            )
        return ranked

    # --- renting ---------------------------------------------------------------------------------

    def ensure_ssh_key(self, public_key: str) -> None:
        """RunPod's images authorize the key in the pod's PUBLIC_KEY env; create passes it there."""
        self._public_key = public_key.strip()

    def create(
        self,
        spec: TrainSpec,
        job_id: str,
        ranked: list[RankedOffer],
        on_attempt: Callable[[str], None] = lambda _m: None,
        max_hours: float | None = None,
    ) -> tuple[InstanceId, RankedOffer]:
        """Rent the cheapest offer that still has a machine; one without capacity moves down the list."""
        req = self.needs(spec)
        watch = watch_script(spec.compute.heartbeat_minutes * 60, max_hours, SELF_DESTROY)
        env = {
            "LORAFLOW_JOB": job_id,
            "LORAFLOW_RUNPOD_API": os.environ.get(API_ENV, DEFAULT_API).rstrip("/"),
            "LORAFLOW_WATCH_B64": base64.b64encode(watch.encode()).decode(),
            "PUBLIC_KEY": self._public_key,
        }
        for candidate in ranked[:10]:
            o = candidate.offer
            fields: dict[str, Any] = {
                "name": label_for(job_id),
                "imageName": req.image or IMAGE,
                "gpuTypeId": o["gpu_type_id"],
                "cloudType": o["cloud"],
                "gpuCount": spec.compute.gpus,
                "containerDiskInGb": spec.compute.gpu.disk_gb,
                "volumeInGb": spec.compute.runpod.volume_gb,
                "volumeMountPath": "/workspace",
                "ports": "22/tcp",
                "dockerArgs": START,
                "env": env,
                "supportPublicIp": True,
                "startSsh": True,
                "minVcpuCount": 2,
                "minMemoryInGb": 15,
            }
            try:
                if o["interruptible"]:
                    pod = self.call("graphql", spot_mutation(fields, float(o["bid_usd_per_gpu"])))
                    pod = pod["data"]["podRentInterruptable"]
                else:
                    pod = self.call("create_pod", **sdk_kwargs(fields))
            except RunPodError as exc:
                if any(p in exc.message.lower() for p in NO_CAPACITY):
                    on_attempt(f"RunPod has no {o['gpu_name']} left on {o['cloud'].lower()} cloud; trying the next")
                    continue
                raise
            return str(pod["id"]), candidate
        raise LoraflowError("no RunPod GPU type that fits had a machine free", fix="try again in a few minutes")

    def status(self, instance_id: InstanceId) -> dict[str, Any] | None:
        return self.call("get_pod", str(instance_id))

    def dead_reason(self, instance_id: InstanceId) -> str | None:
        pod = self.status(instance_id)
        if pod is None:
            return "the pod is gone (terminated)"
        if pod.get("desiredStatus") in DEAD:
            return f"the pod is {str(pod['desiredStatus']).lower()} (a spot pod outbid, or out of credit)"
        return None

    def wait_ready(
        self,
        instance_id: InstanceId,
        check_ssh: SshCheck,
        timeout_s: float = 900,
        poll_s: float | None = None,
        on_stage: Callable[[str], None] = lambda _s: None,
    ) -> tuple[str, int]:
        """Running with its container up (`runtime` is null until then), port 22 mapped on a public IP,
        then the TCP port, then SSH login."""

        def progress() -> Progress:
            pod = self.status(instance_id)
            if pod is None:
                return "disappeared while starting", None, ""
            if pod.get("desiredStatus") in DEAD:
                return f"stopped while starting ({pod.get('desiredStatus')})", None, ""
            return None, ssh_address(pod), "waiting for the pod's container to run"

        poll_s = poll_interval() if poll_s is None else poll_s
        return wait_for_ssh(f"pod {instance_id}", progress, check_ssh, timeout_s, poll_s, on_stage)

    def release(self, instance_id: InstanceId, tries: int = 5) -> float | None:
        """Terminate and confirm it is gone; idempotent (terminating a gone pod is an error we read past).
        Returns when RunPod took our terminate, or None when the pod was gone already."""
        return destroy_confirmed(
            lambda: self.call("terminate_pod", str(instance_id)),
            lambda: self.status(instance_id) is None,
            tries,
            "terminate it by hand in RunPod's console, or run `loraflow reap`",
            f"RunPod pod {instance_id}",
        )

    def owned(self) -> list[Rented]:
        pods = self.call("get_pods") or []
        now = time.time()
        return [
            Rented(
                str(p["id"]),
                str(p["name"]),
                p.get("desiredStatus"),
                (p.get("machine") or {}).get("gpuDisplayName"),
                float(p.get("costPerHr") or 0),
                now - float(p.get("uptimeSeconds") or 0),
            )
            for p in pods
            if str(p.get("name") or "").startswith(LABEL_PREFIX)
        ]


class RunPodError(LoraflowError):
    """RunPod answered with a GraphQL error (HTTP 200 and an `errors` array)."""


def offer_rows(spec: TrainSpec, gpu: dict[str, Any]) -> list[dict[str, Any]]:
    """One GPU type's offers: per cloud the spec allows and the type has, on-demand or at a bid."""
    opts = spec.compute.runpod
    n = spec.compute.gpus
    clouds = {"secure": ["SECURE"], "community": ["COMMUNITY"], "all": ["SECURE", "COMMUNITY"]}[opts.cloud]
    lowest = gpu.get("lowestPrice") or {}
    disk_h = (spec.compute.gpu.disk_gb + opts.volume_gb) * DISK_USD_GB_MONTH / 720
    rows = []
    for cloud in clouds:
        if not gpu.get("secureCloud" if cloud == "SECURE" else "communityCloud"):
            continue
        prefix = "secure" if cloud == "SECURE" else "community"
        if opts.interruptible:
            floor = float(gpu.get(f"{prefix}SpotPrice") or lowest.get("minimumBidPrice") or 0)
            per_gpu = opts.bid_usd_per_gpu or floor
            if not floor or per_gpu < floor:
                continue  # no spot market here, or the bid is under its floor
        else:
            per_gpu = float(gpu.get(f"{prefix}Price") or 0)
            if not per_gpu:
                continue
        rows.append(
            {
                "id": f"{cloud}/{gpu['id']}" + ("/spot" if opts.interruptible else ""),
                "gpu_type_id": gpu["id"],
                "gpu_name": gpu.get("displayName") or gpu["id"],
                "memory_gb": gpu.get("memoryInGb"),
                "cloud": cloud,
                "interruptible": opts.interruptible,
                "bid_usd_per_gpu": per_gpu if opts.interruptible else None,
                "usd_per_gpu_hour": per_gpu,
                "usd_per_hour": round(per_gpu * n + disk_h, 6),
            }
        )
    return rows


def rank(spec: TrainSpec, rows: list[dict[str, Any]]) -> list[RankedOffer]:
    """Cheapest expected job first; ties go to secure cloud (RunPod's own data centres)."""
    ranked = [RankedOffer(r, estimate(spec, str(r["gpu_name"]), r["usd_per_hour"]), "runpod") for r in rows]
    ranked.sort(key=lambda r: (r.estimate.cost_usd, r.offer["cloud"] != "SECURE"))
    return ranked


def ssh_address(pod: dict[str, Any]) -> tuple[str, int] | None:
    """The public IP and port RunPod maps to the pod's 22 (RunPod's basic proxy SSH cannot copy files)."""
    for port in ((pod.get("runtime") or {}).get("ports") or []):
        if port.get("privatePort") == 22 and port.get("isIpPublic") and port.get("ip"):
            return str(port["ip"]), int(port["publicPort"])
    return None


def sdk_kwargs(fields: dict[str, Any]) -> dict[str, Any]:
    """The GraphQL input fields as `runpod.create_pod`'s keyword arguments."""
    names = {
        "imageName": "image_name", "gpuTypeId": "gpu_type_id", "cloudType": "cloud_type", "gpuCount": "gpu_count",
        "containerDiskInGb": "container_disk_in_gb", "volumeInGb": "volume_in_gb",
        "volumeMountPath": "volume_mount_path", "dockerArgs": "docker_args", "supportPublicIp": "support_public_ip",
        "startSsh": "start_ssh", "minVcpuCount": "min_vcpu_count", "minMemoryInGb": "min_memory_in_gb",
    }  # fmt: skip
    return {names.get(k, k): v for k, v in fields.items()}


def spot_mutation(fields: dict[str, Any], bid_usd_per_gpu: float) -> str:
    """`podRentInterruptable` with the same fields as an on-demand pod plus the bid, every string escaped
    (json.dumps writes a valid GraphQL string)."""
    parts = [f"bidPerGpu: {bid_usd_per_gpu}"]
    for key in RUNPOD_POD_INPUT:
        value = fields[key]
        if key == "env":
            items = ", ".join(f"{{key: {json.dumps(k)}, value: {json.dumps(v)}}}" for k, v in value.items())
            parts.append(f"env: [{items}]")
        elif key == "cloudType":
            parts.append(f"cloudType: {value}")
        else:
            parts.append(f"{key}: {json.dumps(value)}")
    return (
        "mutation { podRentInterruptable(input: {" + ", ".join(parts) + "}) "
        "{ id imageName env machineId machine { podHostId } } }"
    )
