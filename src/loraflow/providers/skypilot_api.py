"""SkyPilot's Python API, the calls loraflow makes and nothing else: launch, exec, status, queue, logs, down.

SkyPilot is a client and an API server (started on this machine by the first call when none is set up);
every call returns a request id that `sky.get` waits on. `launch` returns its request id at once so the
lease can be recorded before the minutes of provisioning are waited on, exactly as a Vast.ai instance is
recorded before it is awaited; `launch_result` polls that request without blocking the caller for longer
than it asks.
"""

from __future__ import annotations

import io
import sys
from typing import Any

from loraflow.errors import LoraflowError
from loraflow.providers.skypilot_task import AUTOSTOP_IDLE_MINUTES, TaskPlan, build_task, import_sky

# SkyPilot's request states (sky.server.requests.requests.RequestStatus values)
DONE_OK, DONE_BAD = {"SUCCEEDED"}, {"FAILED", "CANCELLED"}


class SkyApi:
    """Everything loraflow asks of SkyPilot; the only code that imports it. (A stand-in with the same
    methods is chosen by LORAFLOW_SKYPILOT_API, see SkyPilotProvider.api.)"""

    def __init__(self) -> None:
        self.sky = import_sky()

    def accelerators(
        self, cloud: str, names: list[str], region: str | None, count: int, spot: bool = False
    ) -> list[dict[str, Any]]:
        """The catalog's instance types with `count` of one of `names` (any GPU when empty) on `cloud`, the
        cheapest region of each: `accelerator`, `cloud`, `region`, `instance_type`, `price` (the spot price
        with `spot`; types without one are left out), `vram_gb`."""
        from sky import catalog

        found = catalog.list_accelerators(
            gpus_only=True,
            name_filter=f"^({'|'.join(names)})$" if names else None,
            region_filter=region,
            quantity_filter=count,
            clouds=cloud,
            all_regions=spot,  # the catalog keeps each type's cheapest on-demand region, not its cheapest spot one
            require_price=True,
        )
        rows = []
        for name, items in found.items():
            for item in items:
                price = float(item.spot_price if spot else item.price)
                if price != price:  # NaN: no such price in the catalog
                    continue
                rows.append(
                    {
                        "accelerator": name,
                        "cloud": item.cloud.lower(),
                        "region": item.region or None,
                        "instance_type": item.instance_type,
                        "price": price,
                        "vram_gb": item.device_memory if item.device_memory == item.device_memory else None,
                    }
                )
        return rows

    def launch(self, plan: TaskPlan, cluster: str) -> str:
        """Build the task (SkyPilot validates it) and start provisioning; the request id comes back at once.
        `down=True` with the idle minutes: SkyPilot tears the cluster down once no job of its queue runs (the
        watcher job ends)."""
        from sky.skylet.autostop_lib import AutostopWaitFor

        return str(
            self.sky.launch(
                build_task(plan),
                cluster_name=cluster,
                down=True,
                idle_minutes_to_autostop=AUTOSTOP_IDLE_MINUTES,
                wait_for=AutostopWaitFor.JOBS,
            )
        )

    def ssh_proxy(self, cluster: str) -> list[str]:
        """The ProxyCommand SkyPilot's own `ssh <cluster>` uses for a Slurm cluster (what its CLI writes into
        ~/.sky/generated/ssh): its websocket proxy to the API server, which runs `srun ... sshd -i` inside the
        allocation through the login node. Node 0, the head."""
        from sky.server import common as server_common
        from sky.utils import directory_utils

        proxy = f"{directory_utils.get_sky_dir()}/templates/websocket_proxy.py"
        return [sys.executable, proxy, server_common.get_server_url(), cluster, "slurm-job-ssh-proxy", "0"]

    def request_state(self, request_id: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED or CANCELLED ('GONE' when the server forgot it)."""
        rows = self.sky.api_status([request_id])
        if not rows:
            return "GONE"
        status = rows[0].get("status") if isinstance(rows[0], dict) else getattr(rows[0], "status", None)
        return str(getattr(status, "value", status))

    def result(self, request_id: str) -> Any:
        """The finished request's result, or its error raised as SkyPilot raised it."""
        return self.sky.get(request_id)

    def cancel(self, request_id: str) -> None:
        self.sky.get(self.sky.api_cancel(request_id, silent=True))

    def exec(self, task: Any, cluster: str) -> int | None:
        """Run the task's `run` as a new job on a standing cluster (the watcher again, after it died while
        the cluster stood); the job id."""
        job_id, _handle = self.sky.get(self.sky.exec(task, cluster_name=cluster))
        return job_id

    def status(self, cluster: str) -> dict[str, Any] | None:
        """The cluster's record (`name`, `status` UP/INIT/STOPPED, `handle`), refreshed from the cloud; None
        when SkyPilot knows no such cluster (torn down)."""
        rows = self.sky.get(self.sky.status([cluster], refresh=self.sky.StatusRefreshMode.AUTO))
        return _row(rows[0]) if rows else None

    def clusters(self, prefix: str) -> list[dict[str, Any]]:
        """Every cluster whose name starts with `prefix` (loraflow's), as SkyPilot's table has them."""
        return [_row(r) for r in self.sky.get(self.sky.status()) if str(_row(r)["name"]).startswith(prefix)]

    def queue(self, cluster: str) -> list[dict[str, Any]]:
        """The cluster's jobs, newest first: `job_id`, `job_name`, `status` (RUNNING, SUCCEEDED, FAILED...)."""
        return [_row(r) for r in self.sky.get(self.sky.queue(cluster, skip_finished=False))]

    def logs(self, cluster: str, job_id: int | None, tail: int = 50) -> str:
        """The last lines of one job's log (without following)."""
        out = io.StringIO()
        try:
            self.sky.tail_logs(cluster, job_id, follow=False, tail=tail, output_stream=out)
        except Exception as exc:
            raise LoraflowError(f"SkyPilot gave no log for {cluster} job {job_id}: {exc}") from exc
        return out.getvalue()

    def down(self, cluster: str) -> bool:
        """Tear the cluster down (all billing stops); False when SkyPilot knew no such cluster (down already)."""
        from sky import exceptions

        try:
            self.sky.get(self.sky.down(cluster))
        except exceptions.ClusterDoesNotExist:
            return False
        return True


def _row(record: Any) -> dict[str, Any]:
    """A SkyPilot response (a pydantic model that also reads like a dict) as a plain dict with its enums'
    values (`status: 'UP'`), the handle kept as the object it is."""
    data = dict(record.items()) if hasattr(record, "items") else dict(record)
    if hasattr(record, "handle"):
        data["handle"] = record.handle
    status = data.get("status")
    data["status"] = str(getattr(status, "value", status))
    return data
