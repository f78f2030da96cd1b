"""Resuming a job through the same door as submitting one.

A resume starts training again, so in the service it passes the checks a submission passes: the service
is not paused (503), the user is under the concurrency limit (429), the stored spec still satisfies the
trust policy and the operator's limits as they are now (422), and the credits for another run are
held (402). Before, `POST /api/jobs/{id}/resume` trained while the service was paused and made two
jobs for a user allowed one. Any future action that starts work (retry, rerun) goes through `reopen`.
The CLI on one's own machine (no ServiceConfig) resumes as it always did.
"""

from __future__ import annotations

from typing import Any

from loraflow.errors import Refused
from loraflow.jobs.states import RESUMABLE
from loraflow.jobs.store import Store
from loraflow.running.control import resume
from loraflow.running.submit import ServiceConfig, check_open, read_spec, submitting


def reopen(store: Store, job_id: str, owner: str, config: ServiceConfig | None, platform: Any = None) -> None:
    """Resume `job_id` for `owner` if the service's door admits it; refusals change nothing."""
    job = store.get(job_id)
    if config is None or job.state not in RESUMABLE:  # one's own machine; a runner kept alive; or a 409
        resume(store, job_id)
        return
    spec = job.train_spec
    read_spec(_as_written(spec), config, "spec", dataset_path=spec.dataset.path)  # trust and limits, as of now
    with submitting():
        check_open(store, owner, config)
        if platform is not None and platform.credits:
            from loraflow.platform.credits import InsufficientCredits, hold, quote

            try:
                hold(store, owner, job_id, quote(spec, platform).points)  # settle charges only what is new
            except InsufficientCredits as exc:
                raise Refused(
                    402, "not enough credits", exc.message, needed=exc.needed, available=exc.available
                ) from exc
        store.update_outputs(job_id, trust="service")  # resumed by a service user: their job is data
        resume(store, job_id)


def _as_written(spec: Any) -> dict[str, Any]:
    """The stored spec as a user could have written it: defaults left out, and engine options left out
    (the catalog sets some for every job, and a user's own were checked when the job came in)."""
    raw = spec.model_dump(mode="json", exclude_defaults=True)
    if isinstance(raw.get("engine"), dict):
        raw["engine"].pop("options", None)
    return raw
