"""Where a job's trainer runs: this machine (`LocalPlace`) or a leased host, an SSH machine or a rented Vast
instance (`RemotePlace`). The runner's stages are handed one place and ask it, instead of branching on
where they are: to lease it, launch and watch the trainer there, bring its outputs back, and let it go.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from loraflow.engines import get_engine
from loraflow.engines.base import Engine, host_outputs
from loraflow.hosts.base import Handle
from loraflow.hosts.local import LocalHost
from loraflow.hosts.ssh import HostUnreachable
from loraflow.jobs.store import Job, Store
from loraflow.layout import JobLayout
from loraflow.monitor.events import EngineEvent
from loraflow.running.following import on_new_host
from loraflow.running.lease_files import fetch, sync, take_back_rescue, upload
from loraflow.running.remote import Emit, HeartbeatPump, RemoteLease, is_remote
from loraflow.spec import TrainSpec


class Place(Protocol):
    """What the stages need from where training runs."""

    can_hand_off: bool  # a worker's follower may follow the trainer there
    accrues_cost: bool  # the place is paid by the second: the runner meters it
    moves_on_stall: bool  # a stall is worth a new host, not a restart on this one

    def host(self) -> Any:
        """The host the trainer runs on (hosts.local.LocalHost or hosts.ssh.SshHost)."""
        ...

    def layout(self) -> JobLayout:
        """The job's folders where the trainer runs."""
        ...

    def keeps_lease(self) -> contextlib.AbstractContextManager[None]:
        """Held while the runner works on the job: keeps a rented host's dead-man switch fed."""
        ...

    def captions_on_host(self) -> bool: ...

    def builds_model_here(self) -> bool:
        """The builtin engine's model is resolved on this machine for the local render."""
        ...

    def acquired(self, job: Job) -> bool:
        """Nothing left to lease or upload (a lease is checked again on each start until training is done)."""
        ...

    def acquire(self, force_budget: bool, dataset_hash: str | None) -> None: ...

    def check(self) -> None:
        """Raises HostUnreachable when the host can no longer train."""
        ...

    def python(self) -> str: ...

    def env(self) -> dict[str, str]: ...

    def engine_layout(self, engine: Engine) -> JobLayout:
        """The job folder the engine's launch decisions read (resume point, next run, final file): where it
        trains, or this machine's copy of a leased host's engine outputs (engines.base.host_outputs)."""
        ...

    def on_host(self, value: str) -> str:
        """A path (or a command line) made from `engine_layout`, as the host where training runs sees it."""
        ...

    def log_size(self, handle: Handle) -> int: ...

    def has(self, path: str) -> bool: ...

    def collect(self) -> list[EngineEvent]:
        """New checkpoints and samples, while the trainer runs."""
        ...

    def collect_after_exit(self) -> list[EngineEvent]: ...

    def bring_back(self, finals: list[tuple[str, str]], ok: bool) -> list[EngineEvent]:
        """After the trainer exited: its result's files, (there, here) each (when it succeeded: the final LoRA
        and, for a pair, the other expert's), and its last checkpoints, copied here."""
        ...

    def sync(self, patient: bool = True) -> list[EngineEvent]:
        """The checkpoints a stop or a lost host leaves (nothing to copy on this machine)."""
        ...

    def watch_fired(self) -> str | None:
        """Why the host's dead-man switch stopped the trainer, when it did (a rented host only)."""
        ...

    def ready(self, job: Job) -> bool:
        """A host is leased and set up."""
        ...

    def release(self, reason: str) -> None: ...


class LocalPlace:
    """The trainer runs on this machine: nothing to lease, copy or let go."""

    can_hand_off = False
    accrues_cost = False
    moves_on_stall = False

    def __init__(self, store: Store, job_id: str, spec: TrainSpec, layout: JobLayout, engine: Engine) -> None:
        self.store, self.job_id, self.spec, self._layout, self.engine = store, job_id, spec, layout, engine
        self._host = LocalHost()

    def host(self) -> LocalHost:
        return self._host

    def layout(self) -> JobLayout:
        return self._layout

    @contextlib.contextmanager
    def keeps_lease(self) -> Iterator[None]:
        yield

    def captions_on_host(self) -> bool:
        return False

    def builds_model_here(self) -> bool:
        return True

    def acquired(self, job: Job) -> bool:
        return "acquire" in job.stages_done

    def acquire(self, force_budget: bool, dataset_hash: str | None) -> None:
        lease = {"provider": "local", "host": os.uname().nodename, "price_usd_h": 0.0}
        self.store.update(self.job_id, lease=lease)
        self.store.append_event(self.job_id, "host.acquired", lease)

    def check(self) -> None:
        return None

    def python(self) -> str:
        return "auto"

    def env(self) -> dict[str, str]:
        return {}

    def engine_layout(self, engine: Engine) -> JobLayout:
        return self._layout

    def on_host(self, value: str) -> str:
        return value

    def log_size(self, handle: Handle) -> int:
        log = Path(handle.log_file)
        return log.stat().st_size if log.exists() else 0

    def has(self, path: str) -> bool:
        return Path(path).exists()

    def collect(self) -> list[EngineEvent]:
        return self.engine.collect(self.spec, self._layout)

    def collect_after_exit(self) -> list[EngineEvent]:
        return self.engine.collect(self.spec, self._layout)

    def bring_back(self, finals: list[tuple[str, str]], ok: bool) -> list[EngineEvent]:
        return []

    def sync(self, patient: bool = True) -> list[EngineEvent]:
        return []

    def watch_fired(self) -> str | None:
        return None

    def ready(self, job: Job) -> bool:
        return False

    def release(self, reason: str) -> None:
        return None


class RemotePlace:
    """The trainer runs on a leased host (SSH or rented), reached through the job's `RemoteLease`."""

    can_hand_off = True
    accrues_cost = True
    moves_on_stall = True

    def __init__(self, store: Store, job_id: str, spec: TrainSpec, layout: JobLayout, emit: Emit) -> None:
        self.store, self.job_id, self.spec = store, job_id, spec
        self.lease = RemoteLease(store, job_id, spec, layout, emit)

    def host(self) -> Any:
        return self.lease.host()

    def layout(self) -> JobLayout:
        return self.lease.layout()

    @contextlib.contextmanager
    def keeps_lease(self) -> Iterator[None]:
        pump = HeartbeatPump(self.lease).start() if self.lease.rented else None
        try:
            yield
        finally:
            if pump is not None:
                pump.stop()

    def captions_on_host(self) -> bool:
        return self.lease.captions_here()

    def builds_model_here(self) -> bool:
        return self.spec.base_model == "tiny-flux"

    def acquired(self, job: Job) -> bool:
        return "train" in job.stages_done

    def acquire(self, force_budget: bool, dataset_hash: str | None) -> None:
        if self.lease.let_go_if_dead():
            on_new_host(self.lease.local)  # its log and trainer went with it, whether or not a new one comes
        if not self.lease.lease:  # a host is to be rented: first what the lost one left, while nothing bills
            take_back_rescue(self.lease)
        self.lease.acquire(force_budget=force_budget)
        upload(self.lease, dataset_hash)

    def check(self) -> None:
        reason = self.lease.dead_reason()
        if reason:
            raise HostUnreachable(reason)

    def python(self) -> str:
        return self.spec.compute.python

    def env(self) -> dict[str, str]:
        return self.lease.env()

    def mirrors(self, engine: Engine) -> bool:
        """The engine decides its launches from its own outputs, which are mirrored here (lease_files.sync)."""
        return host_outputs(engine, self.spec, self.lease.local) is not None

    def engine_layout(self, engine: Engine) -> JobLayout:
        return self.lease.local if self.mirrors(engine) else self.layout()

    def on_host(self, value: str) -> str:
        """The job folder has the same shape here and on the host: this machine's job folder becomes the host's,
        in a path or anywhere in a command line (musubi's runs are one `bash -c` line)."""
        here, there = self.lease.local.root.rstrip("/"), self.layout().root.rstrip("/")
        if value == here:
            return there
        return value.replace(here + "/", there + "/")

    def log_size(self, handle: Handle) -> int:
        return self.lease.host().size(handle.log_file) or 0

    def has(self, path: str) -> bool:
        return self.lease.host().size(path) is not None

    def collect(self) -> list[EngineEvent]:
        return sync(self.lease)

    def collect_after_exit(self) -> list[EngineEvent]:
        """The exit's outputs come with bring_back; a mirrored engine's are copied first, as its final file's
        path (and whether another run comes) is read from the copy."""
        return sync(self.lease) if self.mirrors(get_engine(self.spec.engine.name)) else []

    def bring_back(self, finals: list[tuple[str, str]], ok: bool) -> list[EngineEvent]:
        if ok:
            for theirs, mine in finals:
                fetch(self.lease, theirs, mine)
        return sync(self.lease)

    def sync(self, patient: bool = True) -> list[EngineEvent]:
        return sync(self.lease, patient=patient)

    def watch_fired(self) -> str | None:
        return self.lease.watch_fired()

    def ready(self, job: Job) -> bool:
        return bool(job.lease and job.lease.get("ready"))

    def release(self, reason: str) -> None:
        if self.store.get(self.job_id).lease:
            self.lease.release(reason)


def place_for(store: Store, job_id: str, spec: TrainSpec, layout: JobLayout, engine: Engine, emit: Emit) -> Place:
    """The place a spec trains in: its compute provider says which."""
    if is_remote(spec):
        return RemotePlace(store, job_id, spec, layout, emit)
    return LocalPlace(store, job_id, spec, layout, engine)
