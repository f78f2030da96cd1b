"""The platform's periodic duties: external checks before training, settling credits, registering models,
removing abandoned uploads, retention (platform/gc.py).

Each duty is idempotent and recorded on the job, so any number of servers and workers may sweep.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Job, Store
from loraflow.platform.config import PlatformConfig

ENDED = [JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.STOPPED, JobState.STOPPED_BUDGET]
UPLOADS_EVERY_S = 600.0  # walking every upload folder each sweep (seconds apart) would be wasted work
_uploads_swept_at: float | None = None


def ask_precheck(job: Job, cfg: PlatformConfig, client: httpx.Client) -> tuple[str, str]:
    """The hook answers {"decision": "allow" | "deny" | "pending", "reason": "..."}; silence means pending."""
    spec = job.train_spec
    payload = {
        "job_id": job.id,
        "owner": job.owner,
        "name": job.name,
        "base_model": job.base_model,
        "images": job.outputs.images,
        "nsfw": bool(getattr(spec, "nsfw", False)),
        "trigger_word": spec.dataset.trigger_word,
    }
    try:
        answer = client.post(str(cfg.precheck_url), json=payload).json()
    except (httpx.HTTPError, ValueError) as exc:
        return "pending", f"the check did not answer ({type(exc).__name__}); asking again"
    decision = str(answer.get("decision", "pending"))
    return (decision if decision in ("allow", "deny", "pending") else "pending"), str(answer.get("reason", ""))


def run_prechecks(store: Store, cfg: PlatformConfig) -> None:
    from loraflow.running.control import start_runner

    waiting = [j for j in store.list_jobs(states=[JobState.PENDING.value], limit=500) if j.outputs.check == "pending"]
    if not waiting:
        return
    # One client for the sweep: a client per job built a TLS context each (CA certificates read and parsed),
    # for every waiting job every two seconds, in the server's own process (issue 29's bench).
    with httpx.Client(timeout=10) as client:
        answers = [(job, *ask_precheck(job, cfg, client)) for job in waiting]
    for job, decision, reason in answers:
        if decision == "pending":
            continue
        store.update_outputs(job.id, check=decision)
        store.append_event(job.id, "check.decided", {"decision": decision, "reason": reason, "by": "external check"})
        if decision == "allow" and not job.outputs.queued:  # a queued job: a worker claims it now
            start_runner(job.id)
        else:
            store.transition(job.id, JobState.CANCELLED, error=f"refused by the external check: {reason}".strip())
            store.append_event(job.id, "job.cancelled", {"reason": reason})


def expire_uploads(store: Store) -> list[str]:
    """Remove abandoned uploads (platform/gc.py's rule: untouched for the upload TTL and read by no job that
    may still run); the names of those removed. Checked every few minutes, not only at gc's period."""
    from loraflow.platform.gc import GcPolicy, plan_uploads, remove

    plan = plan_uploads(store, GcPolicy.from_env())
    for removal in plan.removals:
        remove(removal.path)
    return [r.path.name for r in plan.removals]


def _uploads_due() -> bool:
    global _uploads_swept_at
    now = time.monotonic()
    if _uploads_swept_at is not None and now - _uploads_swept_at < UPLOADS_EVERY_S:
        return False
    _uploads_swept_at = now
    return True


def sweep(store: Store, cfg: PlatformConfig | None = None) -> dict[str, Any]:
    from loraflow.platform.credits import settle
    from loraflow.platform.registry import register_job

    cfg = cfg or PlatformConfig.from_env()
    done: dict[str, Any] = {"settled": [], "registered": [], "uploads_removed": []}
    if _uploads_due():
        done["uploads_removed"] = expire_uploads(store)
    if cfg.precheck_url:
        run_prechecks(store, cfg)
    for job in store.list_jobs(states=[s.value for s in ENDED], limit=500):
        if job.outputs.swept:
            continue
        if cfg.credits and settle(store, job, cfg) is not None:
            done["settled"].append(job.id)
        if job.state is JobState.COMPLETED and job.outputs.lora:
            try:
                done["registered"].append(
                    register_job(store, job, cfg, job.outputs.approved_checkpoint)["slug"]
                )
            except Exception as exc:  # noted on the job; the sweep goes on
                store.append_event(job.id, "warning", {"message": f"could not register the model: {exc}"})
        store.update_outputs(job.id, swept=True)
    _collect_garbage(store, done)
    return done


def _collect_garbage(store: Store, done: dict[str, Any]) -> None:
    """Retention (platform/gc.py), once per LORAFLOW_GC_EVERY_S: the sweep runs every few seconds."""
    from loraflow.platform.gc import periodic

    try:
        collected = periodic(store)
    except Exception as exc:  # a disk problem must not stop checks, credits and the registry
        print(f"retention failed: {exc!r}")
        return
    if collected is not None:
        done["gc"] = collected
