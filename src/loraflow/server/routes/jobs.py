"""`/api/jobs`: create a job from a spec and an upload, list and read jobs and their events (also as
server-sent events), stop, resume, cancel, approve and publish them, download their files.

(No `from __future__ import annotations`: FastAPI reads the route annotations at runtime.)
"""

import asyncio
import json
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import FileResponse, StreamingResponse

from loraflow import paths
from loraflow.errors import Refused, UserInputError
from loraflow.jobs import queue
from loraflow.jobs.states import ACTIVE, JobState
from loraflow.jobs.store import Store
from loraflow.publish.publisher import BEST, Wanted
from loraflow.publish.publisher import approve_job as approve
from loraflow.running.control import request_stop, stop
from loraflow.running.publishing import publish as publish_job
from loraflow.running.reopening import reopen
from loraflow.running.submit import check_open, read_spec, submit
from loraflow.server.deps import Auth, Db, bundle_response, job_file_response, own_job
from loraflow.server.problems import Problem, spec_mapping
from loraflow.server.uploads import save_files

router = APIRouter(tags=["jobs"])


@router.post("/api/jobs", status_code=201)
async def create_job(
    request: Request,
    user: Auth,
    store: Db,
    spec: Annotated[str, Form(description="The training spec, YAML or JSON; dataset.path is set by the server.")],
    dataset: Annotated[UploadFile | None, File(description="A .zip or .tar of images and captions.")] = None,
    files: Annotated[list[UploadFile] | None, File(description="Or: the images and .txt captions.")] = None,
    force: Annotated[bool, Form()] = False,
) -> dict[str, Any]:
    """Create a job from a spec and a dataset upload, check both, and start it."""
    state = request.app.state
    cfg, quotas = state.config, state.quotas
    limit = cfg.max_upload_mb * 1024 * 1024
    if int(request.headers.get("content-length") or 0) > limit:
        raise Problem(413, "upload too large", f"the upload is over {cfg.max_upload_mb} MB")
    quotas.upload(user.name)
    raw = await quotas.off_loop(user.name, spec_mapping, spec, cfg.maxima.spec_bytes, cfg.maxima.spec_nodes)
    uploads = ([dataset] if dataset is not None else []) + list(files or [])
    if not uploads:
        raise Problem(422, "no dataset", "send the dataset as `dataset` (a zip or tar) or as `files`")
    await asyncio.to_thread(check_open, store, user.name, cfg)  # before anything is written; a store read: off the loop
    folder = paths.home() / "uploads" / uuid.uuid4().hex
    try:
        target = await save_files(uploads, folder, limit)
        parsed = await quotas.off_loop(user.name, lambda: read_spec(raw, cfg, "spec", dataset_path=str(target)))
        job = await quotas.off_loop(user.name, submit, store, parsed, user.name, cfg, state.platform, force)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # nothing half-written stays behind
        raise
    return job.to_dict()


@router.get("/api/jobs")
def list_jobs(
    user: Auth,
    store: Db,
    state: Annotated[list[str] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    valid = {s.value for s in JobState}
    for s in state or []:
        if s not in valid:
            raise Problem(422, "invalid state", f"{s!r} is not a job state; use one of {sorted(valid)}")
    jobs = store.list_jobs(owner=user.name, states=state, limit=limit, offset=offset)
    total = store.count_jobs(owner=user.name, states=state)
    places = queue.snapshot(store)
    rows = [{**j.to_dict(), "queue": _place(places.get(j.id))} for j in jobs]
    return {"total": total, "limit": limit, "offset": offset, "jobs": rows}


@router.get("/api/jobs/{job_id}")
def get_job(job_id: str, user: Auth, store: Db) -> dict[str, Any]:
    """The job; `queue` is its place while it waits (position, position_for_user, eta_s), else null;
    `webhooks` is the delivery state per receiver (notify/outbox.py)."""
    from loraflow.notify.outbox import summary

    job = own_job(store, user, job_id)
    hooks = summary(store, job.id, job.train_spec.notifications)
    return {**job.to_dict(), "queue": _place(queue.entry(store, job)), "webhooks": hooks}


@router.get("/api/jobs/{job_id}/events")
def job_events(
    job_id: str,
    user: Auth,
    store: Db,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    type: Annotated[list[str] | None, Query()] = None,
) -> dict[str, Any]:
    own_job(store, user, job_id)
    events = store.events(job_id, after_seq=after, limit=limit, types=type)
    return {
        "events": [_event(e) for e in events],
        "next_after": events[-1].seq if events else after,
    }


@router.get("/api/jobs/{job_id}/events/stream")
async def job_event_stream(
    request: Request,
    job_id: str,
    user: Auth,
    store: Db,
    after: Annotated[int, Query(ge=0)] = 0,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events; reconnecting with Last-Event-ID continues without gaps or repeats. A user has
    at most `LORAFLOW_MAX_STREAMS_PER_USER` open at once (429 past it)."""
    slot = request.app.state.quotas.stream(user.name)  # first: a stream over the quota costs no store read
    slot.__enter__()  # released when the response ends, however it ends
    try:
        await asyncio.to_thread(own_job, store, user, job_id)  # a store read: never on the event loop
    except BaseException:
        slot.__exit__(None, None, None)
        raise
    start = int(last_event_id) if last_event_id and last_event_id.isdigit() else after
    headers = {"Cache-Control": "no-cache"}
    return _CountedStream(slot, _stream(store, job_id, start), media_type="text/event-stream", headers=headers)


class _CountedStream(StreamingResponse):
    """A streaming response that gives its user's stream slot back when it ends, even on a disconnect."""

    def __init__(self, slot: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.__exit__(None, None, None)


async def _stream(store: Store, job_id: str, seq: int) -> AsyncIterator[bytes]:
    idle = 0.0
    while True:
        events = await asyncio.to_thread(store.events, job_id, seq, 500)
        for e in events:
            seq = e.seq
            yield f"id: {e.seq}\nevent: {e.type}\ndata: {json.dumps(_event(e))}\n\n".encode()
        if events:
            idle = 0.0
            continue
        job = await asyncio.to_thread(store.get, job_id)
        if job.state not in ACTIVE and idle > 1.0:
            yield b"event: end\ndata: {}\n\n"
            return
        idle += 0.5
        if idle % 15 == 0:
            yield b": keep-alive\n\n"
        await asyncio.sleep(0.5)


@router.post("/api/jobs/{job_id}/stop")
def stop_job(job_id: str, user: Auth, store: Db) -> dict[str, Any]:
    own_job(store, user, job_id)
    stop(store, job_id)  # a job that is not running answers 409
    return store.get(job_id).to_dict()


@router.post("/api/jobs/{job_id}/resume")
def resume_job(request: Request, job_id: str, user: Auth, store: Db) -> dict[str, Any]:
    """Resume through the submission's door: paused 503, over the limit 429, credits 402, not resumable 409."""
    job = own_job(store, user, job_id)
    reopen(store, job_id, job.owner, request.app.state.config, request.app.state.platform)
    return store.get(job_id).to_dict()


@router.post("/api/jobs/{job_id}/cancel")
def cancel_job(job_id: str, user: Auth, store: Db) -> dict[str, Any]:
    job = own_job(store, user, job_id)
    if job.state is JobState.CANCELLED:
        return job.to_dict()
    if job.state in ACTIVE:
        request_stop(job_id)  # the runner records the stop; the job is cancelled once it has
        store.append_event(job_id, "log", {"message": "cancel requested"})
        _mark_cancel(store, job_id)
    else:
        store.transition(job_id, JobState.CANCELLED)
        store.append_event(job_id, "job.cancelled", {})
    return store.get(job_id).to_dict()


CHECKPOINT = "best (the scorecard's best checkpoint, else the final LoRA), final, or a kept checkpoint's step"


@router.post("/api/jobs/{job_id}/approve")
def approve_job(
    job_id: str, user: Auth, store: Db, checkpoint: Annotated[Wanted, Body(embed=True, description=CHECKPOINT)] = BEST
) -> dict[str, Any]:
    """Release a job held in awaiting_approval, publishing the chosen checkpoint (the scorecard's best by
    default)."""
    own_job(store, user, job_id)
    try:
        approve(store, job_id, checkpoint, user.name)
    except Refused:
        raise  # not awaiting approval: 409
    except UserInputError as exc:
        raise Problem(422, "cannot approve", exc.message) from exc
    except Exception as exc:
        raise Problem(502, "publishing failed", str(exc)) from exc
    return store.get(job_id).to_dict()


@router.post("/api/jobs/{job_id}/publish")
def publish(
    request: Request,
    job_id: str,
    user: Auth,
    store: Db,
    checkpoint: Annotated[Wanted, Body(embed=True, description=CHECKPOINT)] = BEST,
    to: Annotated[
        Literal["huggingface", "s3", "comfydeploy"] | None,
        Body(embed=True, description="Only this target type; comfydeploy registers the published LoRA with the "
             "operator's ComfyDeploy workspace"),
    ] = None,
) -> dict[str, Any]:
    """Publish a completed job (again) to its spec's targets: the scorecard's best checkpoint unless the
    body names one; the answer says which (`checkpoint_step`, None for the final LoRA) and why (`chosen`)."""
    own_job(store, user, job_id)
    granted = request.app.state.config.grants.comfydeploy
    results = publish_job(store, job_id, checkpoint, only=to, comfydeploy_granted=granted)
    first = results[0] if results else {}
    return {"published": [getattr(r, "__dict__", r) for r in results],
            "checkpoint_step": first.get("checkpoint_step"), "chosen": first.get("chosen")}


@router.get("/api/jobs/{job_id}/bundle")
def download_bundle(job_id: str, user: Auth, store: Db) -> FileResponse:
    return bundle_response(own_job(store, user, job_id))


@router.get("/api/jobs/{job_id}/files/{path:path}")
def download_file(job_id: str, path: str, user: Auth, store: Db) -> FileResponse:
    """Any file of the job folder (samples, checkpoints, LoRA), with range requests."""
    return job_file_response(own_job(store, user, job_id), path)


def _mark_cancel(store: Store, job_id: str) -> None:
    """Cancel as soon as the stop lands, from a small thread: the HTTP answer does not wait for it."""

    def wait() -> None:
        for _ in range(1200):
            job = store.get(job_id)
            if job.state not in ACTIVE:
                if job.state is not JobState.CANCELLED:
                    try:
                        store.transition(job_id, JobState.CANCELLED)
                        store.append_event(job_id, "job.cancelled", {})
                    except Exception:  # completed in the meantime: nothing to cancel
                        pass
                return
            time.sleep(0.25)

    threading.Thread(target=wait, daemon=True).start()


def _place(entry: queue.QueueEntry | None) -> dict[str, Any] | None:
    return entry.to_dict() if entry is not None else None


def _event(e: Any) -> dict[str, Any]:
    return {"seq": e.seq, "ts": e.ts.isoformat(), "type": e.type, "stage": e.stage, "data": e.data}
