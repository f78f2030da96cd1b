"""Retention: remove what nobody needs any more, by policy, and say what was freed.

What goes, once the newest file under it is older than the policy's days:
- caches of ended jobs (builtin `cache/`; ai-toolkit's `_latent_cache/`, `_t_e_cache/` and `.aitk_size.json`
  and kohya's `.npz` files in `dataset/`): a resumed job computes them again;
- intermediate checkpoints of completed jobs (`checkpoints/step-N/` and the engines' own numbered saves),
  keeping the checkpoint an approval or a publish chose;
- run-state files of completed jobs (pid, exit code, follow and hand-off state; the logs stay);
- failed and cancelled jobs' folders (after their own, longer, days);
- uploads no job's dataset points into.

Never touched: a job that is active or awaiting approval, its bundle and its LoRA (the final one and
the chosen checkpoint) unless `include_bundles`. Age is the time since the newest file under a path
was written (as `find -mtime` counts it), so a folder someone still writes into is never old. Every
removal is recorded on its job as a `gc.removed` event with the paths and bytes.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow import paths
from loraflow.errors import UserInputError
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Job, Store

DAY_S = 86400.0
NEVER = {*ACTIVE, JobState.AWAITING_APPROVAL}
FOLDER_STATES = {JobState.FAILED, JobState.CANCELLED}
CACHE_STATES = {JobState.COMPLETED, JobState.STOPPED, JobState.STOPPED_BUDGET}
CACHES = ["cache", "dataset/_latent_cache", "dataset/_t_e_cache", "dataset/.aitk_size.json"]
CACHE_GLOBS = ["dataset/**/*.npz"]
RUN_STATE_GLOBS = [
    "run/*.pid", "run/*.exit", "run/*.json", "run/runner.lock", "run/self-follow", "run/budget-stop", "run/stop-request"
]
# ai-toolkit saves <name>_000000100.safetensors (+ optimizer.pt), kohya <name>-step00000100.safetensors.
ENGINE_CHECKPOINT_GLOBS = [
    "aitk/*/*_" + "[0-9]" * 9 + ".safetensors", "aitk/*/optimizer.pt", "kohya/*-step*.safetensors"
]
ENGINE_STATE_GLOBS = ["kohya/*-state"]
STAMP = "gc.last"


@dataclass
class GcPolicy:
    older_than_days: float = 14.0  # caches, intermediate checkpoints and run state of ended jobs
    failed_days: float = 30.0  # failed and cancelled jobs' folders
    uploads_days: float = 1.0  # uploads untouched this long that no job that may still run reads
    include_bundles: bool = False  # also bundles and LoRAs (a completed job's outputs)
    every_s: float = 6 * 3600.0  # how often the service collects; 0: never

    @classmethod
    def from_env(cls) -> GcPolicy:
        d = cls()
        return cls(
            older_than_days=_number("LORAFLOW_GC_OLDER_THAN_DAYS", d.older_than_days),
            failed_days=_number("LORAFLOW_GC_FAILED_DAYS", d.failed_days),
            uploads_days=_number("LORAFLOW_UPLOAD_TTL_HOURS", d.uploads_days * 24) / 24
            if os.environ.get("LORAFLOW_UPLOAD_TTL_HOURS")
            else _number("LORAFLOW_GC_UPLOADS_DAYS", d.uploads_days),
            include_bundles=os.environ.get("LORAFLOW_GC_INCLUDE_BUNDLES", "0") == "1",
            every_s=_number("LORAFLOW_GC_EVERY_S", d.every_s),
        )


def _number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise UserInputError(f"{name}={raw!r} is not a number of days or seconds", fix=f"set {name} to 0 or more")
    return value


@dataclass(frozen=True)
class Removal:
    kind: str  # cache | checkpoint | run_state | folder | bundle | lora | upload
    path: Path
    bytes: int


@dataclass
class Plan:
    """What one job (or the uploads, under job id None) gives back."""

    job_id: str | None
    state: str | None
    removals: list[Removal] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.removals)

    def to_dict(self, root: Path | None = None) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "state": self.state,
            "bytes": self.bytes,
            "paths": [_rel(r.path, root) for r in self.removals],
            "kinds": sorted({r.kind for r in self.removals}),
        }


def _rel(path: Path, root: Path | None) -> str:
    try:
        return str(path.relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def _walk(path: Path) -> Iterator[os.stat_result]:
    """lstat of the path and of everything under it, never following a link."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    yield st
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                try:
                    yield (Path(dirpath) / name).lstat()
                except FileNotFoundError:
                    continue


def size_and_age(path: Path, now: float) -> tuple[int, float]:
    """(bytes, seconds since the newest file under it was written); (0, 0) for a path that is gone.
    Folder times do not count (removing an entry, gc's own work included, touches them) unless a
    folder holds no file at all."""
    size, newest_file, newest_dir = 0, None, None
    for st in _walk(path):
        if stat.S_ISDIR(st.st_mode):
            newest_dir = st.st_mtime if newest_dir is None else max(newest_dir, st.st_mtime)
        else:
            size += st.st_size
            newest_file = st.st_mtime if newest_file is None else max(newest_file, st.st_mtime)
    newest = newest_file if newest_file is not None else newest_dir
    return size, (0.0 if newest is None else now - newest)


def _kept_steps(job: Job) -> set[int]:
    """Checkpoints an approval or a publish chose."""
    steps = {job.outputs.approved_checkpoint}
    steps |= {p.get("checkpoint_step") for p in job.outputs.published if isinstance(p, dict)}
    return {int(s) for s in steps if isinstance(s, int)}


def _matches(root: Path, patterns: list[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        found += [p for p in sorted(root.glob(pattern)) if p not in found]
    return found


def _job_candidates(job: Job, folder: Path, policy: GcPolicy) -> list[tuple[str, Path, float]]:
    """(kind, path, days it must be older than) for one completed or stopped job."""
    out: list[tuple[str, Path, float]] = []
    if job.state not in CACHE_STATES:
        return out
    n = policy.older_than_days
    out += [("cache", folder / name, n) for name in CACHES if (folder / name).exists()]
    out += [("cache", p, n) for p in _matches(folder, CACHE_GLOBS)]
    if job.state is not JobState.COMPLETED:
        return out  # stopped jobs resume from their checkpoints and run state
    kept = _kept_steps(job)
    for p in sorted((folder / "checkpoints").glob("step-*")):
        step = p.name.removeprefix("step-")
        if policy.include_bundles or not (step.isdigit() and int(step) in kept):
            out.append(("checkpoint", p, n))
    out += [("checkpoint", p, n) for p in _matches(folder, ENGINE_CHECKPOINT_GLOBS + ENGINE_STATE_GLOBS)]
    out += [("run_state", p, n) for p in _matches(folder, RUN_STATE_GLOBS)]
    if policy.include_bundles:
        out += [("bundle", folder / "bundle", n)] if (folder / "bundle").exists() else []
        out += [("lora", p, n) for p in sorted(folder.glob("*.safetensors"))]
    return out


def plan_job(job: Job, policy: GcPolicy, now: float | None = None) -> Plan:
    now = time.time() if now is None else now
    plan = Plan(job.id, job.state.value)
    folder = paths.job_dir(job.id)
    if job.state in NEVER or not folder.is_dir():
        return plan
    if job.state in FOLDER_STATES:  # the whole folder, once nothing in it was written for failed_days
        size, age = size_and_age(folder, now)
        if age <= policy.failed_days * DAY_S:
            return plan
        if policy.include_bundles or not (folder / "bundle").exists():
            plan.removals.append(Removal("folder", folder, size))
            return plan
        for entry in sorted(folder.iterdir()):  # a cancelled approval keeps its bundle
            if entry.name != "bundle":
                plan.removals.append(Removal("folder", entry, size_and_age(entry, now)[0]))
        return plan
    for kind, path, days in _job_candidates(job, folder, policy):
        size, age = size_and_age(path, now)
        if age > days * DAY_S:
            plan.removals.append(Removal(kind, path, size))
    return plan


def plan_uploads(store: Store, policy: GcPolicy, now: float | None = None) -> Plan:
    """Uploads untouched for the policy's days that no job that may still run reads its dataset from."""
    now = time.time() if now is None else now
    plan = Plan(None, None)
    root = paths.home() / "uploads"
    if not root.is_dir():
        return plan
    used = _dataset_paths(store)
    for upload in sorted(root.iterdir()):
        mine = str(upload.resolve())
        if any(u == mine or u.startswith(mine + os.sep) for u in used):
            continue
        size, age = size_and_age(upload, now)
        if age > policy.uploads_days * DAY_S:
            plan.removals.append(Removal("upload", upload, size))
    return plan


def _dataset_paths(store: Store) -> list[str]:
    """Datasets of jobs that may still read theirs: all but completed and cancelled (a stopped or failed
    job can be resumed)."""
    from sqlalchemy import select

    from loraflow.jobs.models import JobRow

    done = [JobState.COMPLETED.value, JobState.CANCELLED.value]
    with store.reader() as s:
        specs = s.execute(select(JobRow.spec).where(JobRow.state.not_in(done))).scalars().all()
    out = []
    for spec in specs:
        path = ((spec or {}).get("dataset") or {}).get("path")
        if isinstance(path, str) and path:
            out.append(str(Path(path).expanduser().resolve()))
    return out


def plan_all(store: Store, policy: GcPolicy, now: float | None = None) -> list[Plan]:
    ended = [s.value for s in JobState if s not in NEVER]
    jobs = store.list_jobs(states=ended, limit=1_000_000)
    plans = [plan_job(job, policy, now) for job in jobs]
    plans.append(plan_uploads(store, policy, now))
    return [p for p in plans if p.removals]


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def collect(store: Store, policy: GcPolicy, dry_run: bool = False, now: float | None = None) -> list[Plan]:
    """Remove what the policy says (nothing with `dry_run`); each job's removals become one `gc.removed`
    event. A job whose state changed since it was planned (resumed, say) is left alone."""
    plans = plan_all(store, policy, now)
    if dry_run:
        return plans
    done: list[Plan] = []
    for plan in plans:
        if plan.job_id is not None and store.get(plan.job_id).state.value != plan.state:
            continue
        for removal in plan.removals:
            remove(removal.path)
        if plan.job_id is not None:
            data = plan.to_dict(paths.job_dir(plan.job_id))
            fields: dict[str, Any] = {}
            if "folder" in data["kinds"] and plan.state == JobState.FAILED.value:
                fields["stages_done"] = []  # its dataset and checkpoints are gone: a resume starts over
            store.append_event(
                plan.job_id, "gc.removed", {k: data[k] for k in ("paths", "bytes", "kinds")}, **fields
            )
        done.append(plan)
    return done


def due(policy: GcPolicy, now: float | None = None) -> bool:
    """Whether the service's periodic collection is due; marks it started (a stamp file under LORAFLOW_HOME,
    so several servers on one home collect once per period between them, near enough)."""
    if policy.every_s <= 0:
        return False
    now = time.time() if now is None else now
    stamp = paths.home() / STAMP
    try:
        if now - stamp.stat().st_mtime < policy.every_s:
            return False
    except FileNotFoundError:
        pass
    stamp.touch()
    os.utime(stamp, (now, now))
    return True


def periodic(store: Store, policy: GcPolicy | None = None) -> dict[str, Any] | None:
    """The sweep's duty: collect when due; a summary of what went, or None when it was not due."""
    policy = policy or GcPolicy.from_env()
    if not due(policy):
        return None
    plans = collect(store, policy)
    return {"jobs": [p.job_id for p in plans if p.job_id], "bytes": sum(p.bytes for p in plans)}
