"""A job's remote lease: rent or reach a host, ship what training needs, bring results back, let go
(what is shipped and brought back is in running/lease_files.py).

The lease is written to the job record *before* it is waited on, so an orchestrator killed at any
point finds it again (by the record, or by the instance label after a crash inside create) and never
rents a second machine for the same job. Every lease that ends is appended to the job's `outputs.leases` with
its seconds and price, which is where the job's cost comes from.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.errors import LoraflowError, UserInputError
from loraflow.hosts.ssh import HostUnreachable, SshEndpoint, SshHost
from loraflow.jobs.costs import job_cost, lease_cost, lease_seconds
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.monitor import events as ev
from loraflow.spec import S3Target, TrainSpec

if TYPE_CHECKING:
    from loraflow.providers.base import Provider

from loraflow.providers.registry import RENTED, is_rented

REMOTE_PROVIDERS = {"ssh", *RENTED}
Emit = Callable[[str, dict[str, Any]], None]
BEAT_FILE = "host.beat"  # in the job's run folder: touched each time a heartbeat reaches the rented host


def is_remote(spec: TrainSpec) -> bool:
    return spec.compute.provider in REMOTE_PROVIDERS


class RemoteLease:
    def __init__(self, store: Store, job_id: str, spec: TrainSpec, local: JobLayout, emit: Emit) -> None:
        self.store = store
        self.job_id = job_id
        self.spec = spec
        self.local = local
        self.emit = emit
        self._host: SshHost | None = None
        self._provider: Provider | None = None

    # --- record ----------------------------------------------------------------------------------

    @property
    def lease(self) -> dict[str, Any] | None:
        lease = self.store.get(self.job_id).lease
        return lease if lease and lease.get("provider") == self.spec.compute.provider else None

    def save(self, lease: dict[str, Any] | None) -> None:
        self.store.update(self.job_id, lease=lease)

    @property
    def rented(self) -> bool:
        return is_rented(self.spec.compute.provider)

    @property
    def provider(self) -> Provider:
        """The spec's rented-GPU provider (providers/registry.py); only asked for on rented leases."""
        if self._provider is None:
            from loraflow.engines import engine_needs
            from loraflow.providers.registry import provider_for

            self._provider = provider_for(self.spec.compute.provider, needs=engine_needs)
        return self._provider

    def host(self) -> SshHost:
        lease = self.lease
        if not lease or not lease.get("ssh"):
            raise HostUnreachable("the job has no ready host")
        if self._host is None or self._host.endpoint.to_dict() != lease["ssh"]:
            self._host = SshHost(SshEndpoint.from_dict(lease["ssh"]))
        return self._host

    def layout(self) -> JobLayout:
        lease = self.lease
        if not lease or not lease.get("root"):
            raise HostUnreachable("the job has no ready host")
        return JobLayout(lease["root"])

    # --- acquire ---------------------------------------------------------------------------------

    def let_go_if_dead(self) -> bool:
        """A recorded, ready host that can no longer train is let go (destroyed, its cost booked). True
        when that happened: its trainer and log went with it."""
        lease = self.lease
        if not lease or not lease.get("ready"):
            return False
        reason = self.dead_reason()
        if reason is None:
            return False
        self.release(reason)
        return True

    def acquire(self, force_budget: bool = False) -> None:
        """A ready host for the job: the recorded one (let_go_if_dead said it lives), else a new one."""
        lease = self.lease
        if lease and lease.get("ready"):
            self.emit(ev.LOG, {"message": f"re-using the lease on {lease.get('gpu') or lease['ssh']['host']}"})
            return
        if self.spec.compute.provider == "ssh":
            self._acquire_ssh()
        else:
            self._acquire_rented(lease, force_budget)

    def _acquire_ssh(self) -> None:
        from loraflow.providers.keys import ensure_key
        from loraflow.running.trust import ssh_target

        target = ssh_target(self.spec)
        identity = target.identity_file or str(ensure_key()[0])
        endpoint = SshEndpoint(
            target.host, target.port, target.user, identity, str(Path(self.local.run) / "known_hosts")
        )
        lease = {"provider": "ssh", "host": target.host, "price_usd_h": 0.0, "started_at": time.time(), "ssh": None}
        self.save(lease)
        host = SshHost(endpoint)
        host.check()
        self._finish_acquire(lease, endpoint, host, target.root)

    def _acquire_rented(self, lease: dict[str, Any] | None, force_budget: bool) -> None:
        from loraflow.providers.base import label_for
        from loraflow.providers.keys import ensure_key

        provider = self.provider
        key_path, public = ensure_key()
        if lease is None:
            # A crash between create and recording it leaves a labelled instance: adopt it, not a second one.
            mine = [r for r in provider.owned() if r.label == label_for(self.job_id)]
            for extra in mine[1:]:
                provider.release(extra.id)
            if mine:
                row = mine[0]
                lease = {
                    "provider": provider.name,
                    "instance_id": row.id,
                    "gpu": row.gpu,
                    "price_usd_h": row.usd_per_hour,
                    "started_at": row.started_at or time.time(),
                    "label": row.label,
                    "ssh": None,
                }
                self.save(lease)
                self.emit(ev.LOG, {"message": f"found instance {row.id} by its label; re-using it"})
        if lease is None:
            ranked = provider.offers(self.spec)
            check_budget(self.spec, ranked[0].estimate.cost_usd, force_budget, self.spent())
            provider.ensure_ssh_key(public)
            instance_id, chosen = provider.create(
                self.spec,
                self.job_id,
                ranked,
                on_attempt=lambda m: self.emit(ev.WARNING, {"message": m}),
                max_hours=self.spec.budget.max_hours,
            )
            lease = {
                "provider": provider.name,
                "instance_id": instance_id,
                "offer_id": chosen.id,
                "gpu": chosen.gpu,
                "price_usd_h": chosen.usd_per_hour,
                "estimate_usd": chosen.estimate.cost_usd,
                "started_at": time.time(),
                "label": label_for(self.job_id),
                "ssh": None,
            }
            self.save(lease)  # recorded before it is awaited
            self.emit(
                "host.created",
                {k: lease[k] for k in ("instance_id", "offer_id", "gpu", "price_usd_h", "estimate_usd")},
            )
        known = str(Path(self.local.run) / f"known_hosts-{lease['instance_id']}")

        def check_ssh(host: str, port: int) -> None:
            # asked each time: SkyPilot learns the login from the cluster it launched (ubuntu, gcpuser...)
            SshHost(SshEndpoint(host, port, provider.ssh_user, str(key_path), known, proxy()), retries=0).check()

        def proxy() -> tuple[str, ...] | None:
            # what SSH talks through, where the provider reaches its machine through a proxy (SkyPilot's Slurm)
            route = getattr(provider, "ssh_proxy", None)
            return tuple(route) if route else None

        try:
            address = provider.wait_ready(
                lease["instance_id"],
                check_ssh,
                timeout_s=self.spec.compute.ready_timeout_s,
                on_stage=lambda s: self.emit(ev.LOG, {"message": s}),
            )
        except LoraflowError as exc:
            self.release(f"not ready: {exc.message}")
            raise
        endpoint = SshEndpoint(address[0], address[1], provider.ssh_user, str(key_path), known, proxy())
        host = SshHost(endpoint)
        root = self.spec.compute.ssh.root if self.spec.compute.ssh else "~/loraflow"
        self._finish_acquire(lease, endpoint, host, root)

    def _finish_acquire(self, lease: dict[str, Any], endpoint: SshEndpoint, host: SshHost, root: str) -> None:
        python = self.spec.compute.python
        proc = host.exec(f"{shlex.quote(python)} -c 'import sys; print(sys.version.split()[0])'", check=False)
        if proc.returncode != 0:
            raise UserInputError(
                f"`{python}` does not run on {endpoint.host}:{endpoint.port}",
                fix="set compute.python to the host's Python, or use an image that has one",
            )
        lease.update(ssh=endpoint.to_dict(), root=f"{host.expand(root).rstrip('/')}/{self.job_id}", ready=True)
        lease["uploaded"] = False
        if is_rented(lease.get("provider")):
            self.arm_watch(host, lease["root"])
        self.save(lease)
        self._host = host
        self.emit(
            "host.acquired",
            {k: lease.get(k) for k in ("provider", "instance_id", "gpu", "price_usd_h", "root")}
            | {"host": f"{endpoint.host}:{endpoint.port}"},
        )

    # --- the host's dead-man switch (providers/vast_watch.py) ------------------------------------

    def arm_watch(self, host: SshHost, root: str) -> None:
        """Tell the instance's watcher where the job lives, so that when the heartbeat stops it can ask
        this trainer for a checkpoint, and where to push that checkpoint when there is storage for it."""
        from loraflow.providers.vast_watch import TOUCH

        host.exec(f"{TOUCH} && printf %s {shlex.quote(root)} > ~/.loraflow-watch/root")
        url = self.rescue_url()
        if url is not None:  # on stdin, never on a command line that an error message could repeat
            host.exec("umask 077 && cat > ~/.loraflow-watch/upload_url", stdin=url.encode())
            self.emit(ev.LOG, {"message": "the host pushes its last checkpoint to the S3 target if it loses us"})

    def rescue_object(self, lease: dict[str, Any]) -> tuple[S3Target, str] | None:
        """Where one lease's watcher leaves its last checkpoint: `<prefix>/<job>/rescue/<lease>/checkpoint.tar`
        in the job's first S3 target (None without one). One key per lease: a host can only ever write its
        own, so an earlier host of the job cannot plant a checkpoint for a later resume."""
        target = next((t for t in self.spec.publish.targets if isinstance(t, S3Target)), None)
        if target is None:
            return None
        tag = str(lease.get("instance_id") or int(float(lease.get("started_at") or 0)))
        parts = (target.prefix.strip("/"), self.job_id, "rescue", tag, "checkpoint.tar")
        return target, "/".join(p for p in parts if p)

    def rescue_url(self) -> str | None:
        """A presigned PUT URL for the current lease's rescue object: the host needs no credentials to use
        it. It lives as long as the watcher can need it (the job's hours, its half hour, the save grace and
        the upload), not a week. None without an S3 target."""
        place = self.rescue_object(self.lease or {})
        if place is None:
            return None
        target, key = place
        expires = min(7 * 24 * 3600, int((self.spec.budget.max_hours or 24) * 3600) + 3 * 3600)
        try:
            from loraflow.publish.s3 import client, presigned_put

            return presigned_put(client(target.endpoint_url), target.bucket, key, expires=expires)
        except Exception as exc:  # no boto3 or no credentials: the watcher still saves and destroys
            self.emit(ev.WARNING, {"message": f"no rescue upload URL for the host ({type(exc).__name__})"})
            return None

    def watch_fired(self) -> str | None:
        """Why the host's watcher gave up on us (it stops the trainer, saves and destroys the instance), or
        None when it did not or this host has no watcher."""
        from loraflow.providers.vast_watch import FIRED

        lease = self.lease
        if not lease or not is_rented(lease.get("provider")) or not lease.get("ssh"):
            return None
        try:
            out = self.host().exec(FIRED, timeout=30, check=False).stdout
        except LoraflowError:
            return None  # unreachable: the caller's own checks see that
        return out.decode(errors="replace").strip() or None

    def beat(self) -> None:
        """Touch the host's heartbeat (one command over the existing SSH connection); never raises."""
        from loraflow.providers.vast_watch import TOUCH

        lease = self.lease
        if not lease or not is_rented(lease.get("provider")) or not lease.get("ssh"):
            return
        with contextlib.suppress(Exception):
            proc = SshHost(SshEndpoint.from_dict(lease["ssh"]), retries=0).exec(TOUCH, timeout=30, check=False)
            if proc.returncode == 0:
                note_beat(self.local)

    # --- the host's files (the parcels and the copies back are in running/lease_files.py) ---------

    def ship(self, local_tar: Path, dest: str) -> None:
        """Upload a tar (resumable, checked) and unpack it into a folder on the host."""
        host, remote = self.host(), self.layout()
        target = f"{remote.root}/.upload/{local_tar.name}"
        host.put(local_tar, target)
        q = shlex.quote
        host.exec(f"mkdir -p {q(dest)} && tar -xf {q(target)} -C {q(dest)} && rm -f {q(target)}")

    def captions_here(self) -> bool:
        """A model captioner runs on the rented GPU, not on the machine that submitted the job."""
        from loraflow.caption.run import MODEL_BACKENDS

        return self.spec.dataset.captions.backend in MODEL_BACKENDS

    def env(self) -> dict[str, str]:
        """Plain settings for the remote command (secrets are added by the runner from its environment)."""
        return {"PYTHONPATH": f"{self.layout().root}/lib", "PYTHONUNBUFFERED": "1"}

    # --- health and release ----------------------------------------------------------------------

    def dead_reason(self) -> str | None:
        lease = self.lease
        if not lease:
            return "no lease"
        if is_rented(lease.get("provider")):
            reason = self.provider.dead_reason(lease["instance_id"])
            if reason:
                return reason
        try:
            self.host().check()
        except LoraflowError as exc:
            return f"the host does not answer over SSH ({exc.message})"
        return None

    def spent(self) -> float:
        job = self.store.get(self.job_id)
        return job_cost(job.outputs.leases, job.lease if job.lease and job.lease.get("provider") != "local" else None)

    def lost_at(self, lease: dict[str, Any]) -> float | None:
        """When a rented host that was gone before we destroyed it stopped billing, as near as we can tell:
        its dead-man switch destroys it a known time after the last heartbeat it got (vast_watch.py), which
        is never later than that however late the next look comes. The APIs keep no record of it. None
        when no heartbeat reached this lease's host (no switch known to be armed: it ends at the look)."""
        from loraflow.providers.vast_watch import destroyed_by

        beat = last_beat(self.local)
        if beat is None or beat < float(lease.get("started_at") or 0):
            return None
        return destroyed_by(beat, self.spec.compute.heartbeat_minutes * 60)

    def release(self, reason: str) -> None:
        """Destroy (for rented hosts) and confirm; the lease moves into the job's history with its cost: until
        the API took our destroy, or, for a host already gone, until its dead-man switch ended it."""
        lease = self.lease
        if not lease:
            return
        if self._host is not None:
            self._host.close()
            self._host = None
        lease["ended_at"] = time.time()
        if is_rented(lease.get("provider")) and lease.get("instance_id"):
            destroyed_at = self.provider.release(lease["instance_id"])
            lost_at = None if destroyed_at else self.lost_at(lease)
            lease["ended_at"] = destroyed_at or min(lease["ended_at"], lost_at or lease["ended_at"])
            lease["ended_by"] = "destroy" if destroyed_at else (
                "dead-man switch (last heartbeat + its window)" if lost_at else "found gone"
            )
        job = self.store.get(self.job_id)
        history = [*job.outputs.leases, {k: v for k, v in lease.items() if k != "ssh"}]
        self.store.update_outputs(self.job_id, leases=history)
        self.save(None)
        self.store.update(self.job_id, cost_usd=job_cost(history, None))
        self.emit(
            "host.released",
            {
                "reason": reason,
                "instance_id": lease.get("instance_id"),
                "ended_by": lease.get("ended_by"),
                "seconds": round(lease_seconds(lease), 1),
                "usd": round(lease_cost(lease), 4),
            },
        )


def note_beat(local: JobLayout) -> None:
    """A heartbeat reached the host: its time (the file's mtime) is what a later look ends a lost lease by."""
    with contextlib.suppress(OSError):
        Path(local.run, BEAT_FILE).touch()


def last_beat(local: JobLayout) -> float | None:
    """When the job's host last heard from an orchestrator here (None: never)."""
    try:
        return Path(local.run, BEAT_FILE).stat().st_mtime
    except OSError:
        return None


def check_budget(spec: TrainSpec, estimate_usd: float, force: bool, spent: float = 0.0) -> None:
    cap = spec.budget.max_usd
    if cap is not None and not force and spent + estimate_usd > cap:
        raise UserInputError(
            f"the job is estimated at ${spent + estimate_usd:.2f}, over budget.max_usd ${cap:.2f}",
            fix="raise budget.max_usd, pick cheaper GPUs (compute.gpu), or pass --force to train anyway",
        )


class HeartbeatPump:
    """Keeps a rented host's dead-man switch fed from a thread while this process works on the job (the
    worker's follower feeds it for the jobs it follows)."""

    def __init__(self, remote: RemoteLease) -> None:
        from loraflow.providers.vast_watch import pump_interval_s

        self.remote = remote
        self.interval_s = pump_interval_s(remote.spec.compute.heartbeat_minutes * 60)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"heartbeat-{remote.job_id}")

    def start(self) -> HeartbeatPump:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):  # the store or the host busy: the next beat comes soon
                self.remote.beat()

    def stop(self) -> None:
        self._stop.set()
