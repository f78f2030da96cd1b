"""The one door every job comes in by: the CLI, the API, the web wizard and the notebook all call it.

Reading a submitted spec applies the trust policy (a service user's spec is data, see running/trust.py)
and the operator's limits; submitting applies availability, per-user concurrency, the dataset check,
the credit hold and the external check, then starts the runner. No route can skip a rule because no
route holds one.
"""

from __future__ import annotations

import os
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

from loraflow.dataset import DatasetRun, pair_needs
from loraflow.errors import Refused, SpecError, UserInputError
from loraflow.jobs.states import ACTIVE
from loraflow.jobs.store import Job, Store
from loraflow.media.findings import Report as DatasetReport
from loraflow.running.maxima import Maxima, over_maxima
from loraflow.running.trust import Grants, refusals
from loraflow.spec import TrainSpec, parse_spec

_SUBMITTING = threading.Lock()  # the concurrency count and the new job are one step


def submitting() -> threading.Lock:
    """The lock under which a door counts a user's active jobs and starts one (submit, reopening.py)."""
    return _SUBMITTING


@dataclass
class ServiceConfig:
    """What the operator of `loraflow serve` allows its users (limits like Civitai's TrainingServiceStatus,
    and the grants of running/trust.py). The CLI on one's own machine has none: it passes `None`."""

    available: bool = True
    message: str = ""
    max_upload_mb: int = 2048
    max_images: int = 1000
    max_concurrent_jobs: int = 4
    blocked_base_models: list[str] = field(default_factory=list)
    allowed_base_models: list[str] = field(default_factory=list)  # empty: every catalog model
    max_steps: int | None = 20_000
    max_budget_usd: float | None = None
    max_pixels: int = 80_000_000  # per image; a spec can lower it, never raise it
    max_archive_bytes: int = 4 << 30  # an archive's expanded size (never past max_upload_mb either)
    max_archive_files: int = 20_000
    no_auth: bool = False  # only honoured for 127.0.0.1
    secure_cookies: bool = False  # session cookie `Secure` even when the request looks like plain HTTP
    # Jobs wait in the store for the workers (`serve --workers N`, `loraflow worker`), which start them under
    # their slots and the machine's capacity; off, the door starts each job's runner itself.
    queue_for_workers: bool = False
    grants: Grants = field(default_factory=Grants)
    maxima: Maxima = field(default_factory=Maxima)  # what a spec's knobs and a request may cost (maxima.py)

    @classmethod
    def from_env(cls) -> ServiceConfig:
        env = os.environ

        def names(key: str) -> list[str]:
            return [m.strip() for m in env.get(key, "").split(",") if m.strip()]

        return cls(
            available=env.get("LORAFLOW_SERVICE_AVAILABLE", "1") != "0",
            message=env.get("LORAFLOW_SERVICE_MESSAGE", ""),
            max_upload_mb=int(env.get("LORAFLOW_MAX_UPLOAD_MB", 2048)),
            max_images=int(env.get("LORAFLOW_MAX_IMAGES", 1000)),
            max_concurrent_jobs=int(env.get("LORAFLOW_MAX_CONCURRENT_JOBS", 4)),
            blocked_base_models=names("LORAFLOW_BLOCKED_BASE_MODELS"),
            allowed_base_models=names("LORAFLOW_ALLOWED_BASE_MODELS"),
            max_steps=int(env.get("LORAFLOW_MAX_STEPS") or 20_000),
            max_budget_usd=float(env["LORAFLOW_MAX_BUDGET_USD"]) if env.get("LORAFLOW_MAX_BUDGET_USD") else None,
            max_pixels=int(float(env.get("LORAFLOW_MAX_PIXELS", 80_000_000))),
            max_archive_bytes=int(float(env.get("LORAFLOW_MAX_ARCHIVE_BYTES", 4 << 30))),
            max_archive_files=int(env.get("LORAFLOW_MAX_ARCHIVE_FILES", 20_000)),
            secure_cookies=env.get("LORAFLOW_SECURE_COOKIES", "0") == "1",
            grants=Grants.from_env(),
            maxima=Maxima.from_env(),
            queue_for_workers=env.get("LORAFLOW_QUEUE_FOR_WORKERS", "0") == "1",
        )

    def archive_bound(self) -> int:
        """An archive never expands past what the service would accept as a plain upload."""
        return min(self.max_archive_bytes, self.max_upload_mb << 20)


class DatasetUnfit(Refused):
    """The dataset check found errors; the report travels with it for the door that shows it."""

    def __init__(self, report: DatasetReport) -> None:
        self.report = report
        super().__init__(
            422,
            "dataset not fit to train",
            "the dataset is not fit to train; nothing was started: " + "; ".join(f.line() for f in report.errors),
            findings=[f.to_dict() for f in report.findings],
        )


def read_spec(
    raw: Any, config: ServiceConfig | None, source: str = "spec", dataset_path: str | None = None
) -> TrainSpec:
    """A submitted spec, checked against the service's rules: every problem named at once (SpecError).

    With a `config` (the service) the spec is a user's data: the trust policy applies and the
    operator's limits cap the dataset checks. `dataset_path` is where the server put the upload.
    """
    if isinstance(raw, dict) and dataset_path is not None:
        dataset = raw.get("dataset")
        raw = {**raw, "dataset": {**(dataset if isinstance(dataset, dict) else {}), "path": dataset_path}}
    if config is None:
        return parse_spec(raw, source)
    problems = refusals(raw, config.grants, config.allowed_base_models) if isinstance(raw, dict) else []
    try:
        spec = parse_spec(raw, source)
    except SpecError as exc:
        raise SpecError(source, [*problems, *exc.problems]) from None
    problems += _limits(raw, spec, config)
    if problems:
        raise SpecError(source, problems)
    return spec


def _limits(raw: dict[str, Any], spec: TrainSpec, config: ServiceConfig) -> list[str]:
    """Refuse limits a user raised above the operator's; lower defaults that are above them."""
    out: list[str] = []
    checks = spec.dataset.checks
    written = (raw.get("dataset") or {}).get("checks") or {}
    caps = {
        "max_images": config.max_images,
        "max_pixels": config.max_pixels,
        "max_archive_bytes": config.archive_bound(),
        "max_archive_files": config.max_archive_files,
    }
    for key, cap in caps.items():
        if getattr(checks, key) <= cap:
            continue
        if isinstance(written, dict) and key in written:
            out.append(f"dataset.checks.{key}: {getattr(checks, key)} is over this service's limit {cap}. "
                       f"Fix: remove it or give at most {cap}")
        else:
            setattr(checks, key, cap)
    if spec.base_model in config.blocked_base_models:
        out.append(f"base_model: {spec.base_model} is blocked on this service. Fix: choose another base model")
    if config.allowed_base_models and spec.base_model not in config.allowed_base_models:
        out.append(f"base_model: {spec.base_model} is not in this service's allowed_base_models. Fix: use one of "
                   f"{', '.join(config.allowed_base_models)}")
    steps = spec.training.steps
    if config.max_steps and steps is not None and steps > config.max_steps:
        out.append(f"training.steps: {steps} is over this service's limit {config.max_steps} (max_steps, "
                   f"LORAFLOW_MAX_STEPS). "
                   f"Fix: give at most {config.max_steps}")
    out += over_maxima(raw, spec, config.maxima)
    budget = spec.budget.max_usd
    if config.max_budget_usd and budget is None:
        spec.budget.max_usd = config.max_budget_usd  # no cap written: the operator's applies
    elif config.max_budget_usd and budget > config.max_budget_usd:
        out.append(f"budget.max_usd: {budget} is over this service's max_budget_usd {config.max_budget_usd}. "
                   f"Fix: give at most {config.max_budget_usd}")
    return out


def check_open(store: Store, owner: str, config: ServiceConfig | None) -> None:
    """Refuse before any upload is kept: the service is paused, or this user has too many jobs."""
    if config is None:
        return
    if not config.available:
        raise Refused(503, "service unavailable", config.message or "training is paused on this service")
    active = store.count_jobs(owner=owner, states=[s.value for s in ACTIVE])
    if active >= config.max_concurrent_jobs:
        raise Refused(
            429,
            "too many jobs",
            f"you have {active} active jobs; the limit is {config.max_concurrent_jobs}",
            fix="wait for one to finish, or stop one",
        )


def check_dataset(spec: TrainSpec, config: ServiceConfig | None) -> DatasetReport:
    from loraflow.engines.musubi import video_needs  # clips are checked for the engine that trains on them

    d = spec.dataset
    needs = video_needs(spec), pair_needs(spec)
    report = DatasetRun(d.path, d.checks, d.captions, d.trigger_word, d.caption_extension, *needs).check()
    if not report.ok:
        raise DatasetUnfit(report)
    if config is not None and report.usable_images > config.max_images:
        raise Refused(
            422,
            "too many images",
            f"{report.usable_images} images is over this service's max_images {config.max_images}",
            fix=f"send at most {config.max_images} images",
        )
    return report


def check_local_gpus(spec: TrainSpec) -> None:
    """compute.gpus on this machine needs that many GPUs (a machine without any trains the tiny model in CPU
    processes): one process per GPU would otherwise fail at a device that is not there, after the model load."""
    from loraflow.nvidia_smi import gpu_stats

    if spec.compute.provider != "local" or spec.compute.gpus == 1:
        return
    found = len(gpu_stats() or [])
    if 0 < found < spec.compute.gpus:
        raise UserInputError(
            f"compute.gpus is {spec.compute.gpus} but this machine has {found} GPU(s)",
            fix=f"set compute.gpus: {found} (the global batch grows with more accumulation), or rent a machine "
            "with compute.provider: vastai",
        )


def submit(
    store: Store,
    spec: TrainSpec,
    owner: str = "local",
    config: ServiceConfig | None = None,
    platform: Any = None,
    force: bool = False,
    dataset_checked: bool = False,
) -> Job:
    """Record the job and start it (or hand it to the external check). Refusals create nothing.

    `dataset_checked`: the caller ran `check_dataset` itself (the CLI shows the report, then quotes)."""
    from loraflow.engines import preflight
    from loraflow.engines.installed import require_engine
    from loraflow.running.control import start_runner

    require_engine(spec)  # a missing engine is refused with its install command, in every door
    preflight(spec, force)  # before anything is recorded: a hosted engine's key and price, say
    check_local_gpus(spec)
    if not dataset_checked:
        check_dataset(spec, config)
    with _SUBMITTING:
        check_open(store, owner, config)
        if config is not None:  # names are owned: another user's slug, trigger or Hugging Face repo is refused
            from loraflow.platform.names import names_taken

            if taken := names_taken(store, spec, owner):
                raise SpecError("spec", taken)
        job_id = uuid.uuid4().hex[:12]
        if platform is not None and platform.credits:
            from loraflow.platform.credits import InsufficientCredits, hold, quote

            points = quote(spec, platform).points
            try:
                hold(store, owner, job_id, points)  # before the job exists: refused means nothing was made
            except InsufficientCredits as exc:
                raise Refused(
                    402, "not enough credits", exc.message, needed=exc.needed, available=exc.available
                ) from exc
        flags: dict[str, Any] = {"trust": "operator" if config is None else "service"}
        if force:
            flags["force_budget"] = True
        if config is not None and config.queue_for_workers:
            flags["queued"] = True
        checked = bool(platform is not None and platform.precheck_url)
        if checked:
            flags["check"] = "pending"  # the sweep asks the hook, then starts or cancels it
        # The hook's URL (often with a ?key=) is the operator's: a user's events only say that one is asked.
        asked = (("check.requested", {"check": "external"}),) if checked else ()
        # One transaction with its flags: a worker's claim in between used to take a job before its check flag
        # was written, and started it unchecked.
        job = store.create_job(spec, owner=owner, job_id=job_id, outputs=flags, events=asked)
    job.folder.mkdir(parents=True, exist_ok=True)
    (job.folder / "spec.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    if checked:
        return job
    if not flags.get("queued"):  # else a worker claims it when a slot frees (running/worker.py)
        start_runner(job.id)
    return store.get(job.id)
