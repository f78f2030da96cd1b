"""Request dependencies shared by the API routers: who is asking, and may they touch this job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.responses import FileResponse

from loraflow import paths
from loraflow.jobs.store import Job, Store
from loraflow.server.problems import Problem
from loraflow.server.tokens import User, lookup
from loraflow.server.web_security import FILE_CSP


def get_store(request: Request) -> Store:
    return request.app.state.store


def current_user(request: Request, authorization: Annotated[str | None, Header()] = None) -> User:
    if request.app.state.config.no_auth:
        return User("local", admin=True)
    scheme, _, token = (authorization or "").partition(" ")
    # `Bearer ` is required, and only an API token counts: a web session (lfs_...) is refused here.
    user = lookup(request.app.state.store, token.strip()) if scheme.lower() == "bearer" and token else None
    if user is None:
        raise Problem(401, "unauthorized", "send a valid API token: Authorization: Bearer lft_...")
    return user


def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.admin:
        raise Problem(403, "forbidden", "this needs an administrator's token")
    return user


def own_job(store: Store, user: User, job_id: str) -> Job:
    job = store.get(job_id)  # 404 when there is no such job
    if job.owner != user.name and not user.admin:
        raise Problem(403, "forbidden", f"job {job_id} belongs to another user")
    return job


Auth = Annotated[User, Depends(current_user)]
Admin = Annotated[User, Depends(admin_user)]
Db = Annotated[Store, Depends(get_store)]


def bundle_response(job: Job) -> FileResponse:
    bundle = job.outputs.bundle
    if not bundle or not Path(bundle).is_file():
        raise Problem(404, "no bundle yet", f"job {job.id} is {job.state.value}; the bundle comes when it completes")
    return FileResponse(bundle, media_type="application/zip", filename=Path(bundle).name)


INLINE_IMAGES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


def job_file_response(job: Job, path: str) -> FileResponse:
    """A file of the job folder (samples, checkpoints, the LoRA), never outside it, never run state.

    A job folder holds what its user wrote (captions with any extension, say), so nothing in it is ever
    rendered on the service's origin: raster images are shown inline with their exact type, everything
    else is an `application/octet-stream` attachment, and every answer has nosniff and a sandboxing CSP
    (a stored `x.html` caption once ran as a page in whoever opened it, an administrator included)."""
    root = paths.job_dir(job.id).resolve()
    target = (root / path).resolve()
    if root not in target.parents or not target.is_file() or target.name.endswith((".pid", ".lock", ".wrapper")):
        raise Problem(404, "not found", f"{path} is not a file of job {job.id}")
    image = INLINE_IMAGES.get(target.suffix.lower())
    return FileResponse(
        target,
        media_type=image or "application/octet-stream",
        filename=target.name,
        content_disposition_type="inline" if image else "attachment",
        headers={"X-Content-Type-Options": "nosniff", "Content-Security-Policy": FILE_CSP},
    )
