"""Publishing a job after the fact, the one way every door does it (the API, `loraflow publish`, the web
UI's button): the same checks of the job's state and its targets, then the publish and its record in
the model registry. A refusal is `Refused` with its HTTP status; the CLI shows it with exit code 2."""

from __future__ import annotations

from typing import Any

from loraflow.errors import Refused
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Job, Store
from loraflow.platform.registry import record_published
from loraflow.publish.publisher import BEST, Wanted, choose_checkpoint, publish_job
from loraflow.running.result_check import failed_checkpoints

TARGET_TYPES = ("huggingface", "s3", "comfydeploy")
NOT_GRANTED = (
    "this service does not push LoRAs to ComfyDeploy (its operator's workspace); the operator grants it "
    "with LORAFLOW_SERVICE_COMFYDEPLOY=1"
)


def check_publish(job: Job, only: str | None = None, comfydeploy_granted: bool = True) -> None:
    """Refuse what no door may publish: an unknown target type, a job that has not completed (one held for
    approval is released by approving it), a spec without targets, a target type the spec does not have.
    `comfydeploy_granted` is False where the operator's ComfyDeploy workspace is not the caller's to use."""
    if only is not None and only not in TARGET_TYPES:
        kinds = ", ".join(TARGET_TYPES)
        raise Refused(422, "unknown target", f"unknown target type '{only}'", fix=f"use one of {kinds}")
    if job.state is JobState.FAILED and "publish" not in job.stages_done and "package" in job.stages_done:
        raise Refused(409, "conflict", f"job {job.id} failed while publishing; publish a completed job",
                      fix=f"resume it (`loraflow jobs resume {job.id}`): it publishes and completes, nothing retrained")
    if job.state is not JobState.COMPLETED:
        raise Refused(409, "conflict", f"job {job.id} is {job.state.value}; publish a completed job")
    kinds = {t.type for t in job.train_spec.publish.targets}
    if not kinds:
        raise Refused(422, "no targets", "the job's spec has no publish.targets",
                      fix="add a huggingface or s3 target to the spec")
    if only is not None and only != "comfydeploy" and only not in kinds:
        raise Refused(422, "no targets", f"job {job.id} has no {only} target", fix=f"add a {only} target to the spec")
    if only == "comfydeploy" and not comfydeploy_granted:
        raise Refused(403, "not granted", NOT_GRANTED)


def publish(
    store: Store,
    job_id: str,
    checkpoint: Wanted = BEST,
    only: str | None = None,
    comfydeploy_granted: bool = True,
) -> list[dict[str, Any]]:
    """Check, publish the chosen LoRA to the spec's targets, and record where it went. `checkpoint`: `best`
    (the scorecard's best checkpoint, else the final LoRA), `final` (or None), or a kept checkpoint's step;
    each result says which it took and why (`checkpoint_step`, `chosen`)."""
    job = store.get(job_id)
    check_publish(job, only, comfydeploy_granted)
    choice = choose_checkpoint(job, checkpoint)
    step = choice.step
    if step is not None and step in failed_checkpoints(job.outputs):
        raise Refused(409, "conflict", f"checkpoint {step} of job {job.id} failed the result check "
                      "(see its lora.checked event)", fix="publish the final LoRA or another kept checkpoint")
    results = publish_job(store, job, step, only=only, chosen=choice.why)
    record_published(store, job.id, results)
    return results
