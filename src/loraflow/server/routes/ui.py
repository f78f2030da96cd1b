"""The web UI's session and job pages: log in and out, the job list, a job's live page and its
buttons (stop, resume, publish) and downloads. Every button goes through the same use case as the API.

(No `from __future__ import annotations`: FastAPI reads the route annotations at runtime.)
"""

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from loraflow import paths
from loraflow.jobs.states import ACTIVE, RESUMABLE, JobState
from loraflow.jobs.store import Job, Store
from loraflow.running.control import stop
from loraflow.running.publishing import publish
from loraflow.running.reopening import reopen
from loraflow.server.charts import loss_chart
from loraflow.server.deps import bundle_response, job_file_response, own_job
from loraflow.server.pages import COOKIE, fragment, need_user, render, session_user, store
from loraflow.server.tokens import User, create_session, revoke_by_token, session_hours
from loraflow.server.web_security import check_csrf

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])
PER_PAGE = 50


# --- session ---------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", None, error=None)


@router.post("/login")
def login(request: Request, token: str = Form("")) -> Response:
    session = create_session(store(request), token.strip())  # an API token only, never another session
    if session is None:
        return render(request, "login.html", None, error="That token is not valid.")
    response = RedirectResponse("/", status_code=303)
    secure = request.url.scheme == "https" or request.app.state.config.secure_cookies
    max_age = int(session_hours() * 3600)  # the server ends it then too (tokens.lookup_session)
    response.set_cookie(COOKIE, session, httponly=True, samesite="strict", max_age=max_age, secure=secure)
    return response


@router.post("/logout")
def logout(request: Request) -> Response:
    token = request.cookies.get(COOKIE)
    if token:
        revoke_by_token(store(request), token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# --- jobs ------------------------------------------------------------------------------------


def _jobs_context(db: Store, user: User, page_no: int) -> dict[str, Any]:
    page_no = max(page_no, 1)
    jobs = db.list_jobs(owner=user.name, limit=PER_PAGE, offset=(page_no - 1) * PER_PAGE)
    return {"jobs": jobs, "page": page_no, "per_page": PER_PAGE, "total": db.count_jobs(owner=user.name)}


@router.get("/", response_class=HTMLResponse)
def home(request: Request, page: int = 1) -> Response:
    user = session_user(request)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return render(request, "jobs.html", user, **_jobs_context(store(request), user, page))


@router.get("/queue", response_class=HTMLResponse)
def queue_page(request: Request) -> Response:
    """Every waiting job in the order the workers take them, with its ETA; an admin sees whose each is, a
    user sees their own jobs by name and the others only as places ahead."""
    from loraflow.jobs.queue import snapshot

    user = session_user(request)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    db = store(request)
    places = snapshot(db)
    rows = []
    for job_id, place in sorted(places.items(), key=lambda kv: (kv[1].waiting_for == "approval", kv[1].position)):
        job = db.get(job_id)
        mine = user.admin or job.owner == user.name
        rows.append({"job": job if mine else None, "owner": job.owner if user.admin else None, "place": place})
    return render(request, "queue.html", user, rows=rows)


@router.get("/ui/jobs/rows", response_class=HTMLResponse)
def job_rows(request: Request, page: int = 1) -> HTMLResponse:
    user = need_user(request)
    return fragment(request, "_job_rows.html", _jobs_context(store(request), user, page))


def _own(request: Request, job_id: str) -> Job:
    return own_job(store(request), need_user(request), job_id)


def _live(request: Request, job_id: str) -> HTMLResponse:
    """The live part of a job's page, as the buttons' answer."""
    return fragment(request, "_job_live.html", live_context(store(request), store(request).get(job_id)))


def live_context(db: Store, job: Job) -> dict[str, Any]:
    folder = paths.job_dir(job.id)
    progress = db.events(job.id, types=["progress"], limit=5000)
    samples: dict[int, list[dict[str, str]]] = {}
    prompts = {i["file"]: str(i.get("prompt") or "") for i in _sample_index(folder / "samples")}
    for path in sorted((folder / "samples").glob("step-*/*.png")):
        key = f"{path.parent.name}/{path.name}"
        samples.setdefault(int(path.parent.name.split("-")[1]), []).append(
            {"file": f"samples/{key}", "prompt": prompts.get(key, "")}
        )
    checkpoints = sorted(  # newest first: the dropdown's default is the latest kept checkpoint
        (int(p.name.split("-")[1]) for p in (folder / "checkpoints").glob("step-*") if (p / "meta.json").exists()),
        reverse=True,
    )
    log = db.events(job.id, types=["log", "warning", "error", "stage.started", "job.state"], latest=False)
    eta = None
    if progress and job.state in ACTIVE and progress[-1].data.get("eta_s"):
        eta = f"{int(progress[-1].data['eta_s']) // 60}:{int(progress[-1].data['eta_s']) % 60:02d}"
    return {
        "job": job,
        "percent": round(100 * job.step / job.total_steps, 1) if job.total_steps else 0,
        "eta": eta,
        "active": job.state in ACTIVE,
        "resumable": job.state in RESUMABLE,
        "bundle": bool(job.outputs.bundle) and job.state is JobState.COMPLETED,
        "publishable": job.state is JobState.COMPLETED and bool(job.train_spec.publish.targets),
        "chart": loss_chart([(e.data.get("step"), e.data.get("loss")) for e in progress]),
        "samples": sorted(samples.items(), reverse=True),
        "checkpoints": checkpoints,
        "scorecard": job.outputs.scorecard,
        "scorecard_chart": scorecard_chart(job.outputs.scorecard),
        "best_step": ((job.outputs.scorecard or {}).get("best") or {}).get("checkpoint_step"),
        "log": [_log_line(e) for e in log[-40:]],
    }


def scorecard_chart(summary: dict[str, Any] | None) -> str | None:
    """The scorecard's plot as a data URI for the job page (the same picture as the bundle's scorecard.png)."""
    import base64

    from loraflow.evaluation.plot import scorecard_png

    png = scorecard_png(summary) if summary else None
    return "data:image/png;base64," + base64.b64encode(png).decode() if png else None


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: str) -> Response:
    user = session_user(request)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return render(request, "job.html", user, **live_context(store(request), own_job(store(request), user, job_id)))


@router.get("/ui/jobs/{job_id}/live", response_class=HTMLResponse)
def job_live(request: Request, job_id: str) -> HTMLResponse:
    return fragment(request, "_job_live.html", live_context(store(request), _own(request, job_id)))


@router.post("/ui/jobs/{job_id}/stop", response_class=HTMLResponse)
def ui_stop(request: Request, job_id: str) -> HTMLResponse:
    _own(request, job_id)
    stop(store(request), job_id)  # refused as on the API: the page's banner says why
    return _live(request, job_id)


@router.post("/ui/jobs/{job_id}/resume", response_class=HTMLResponse)
def ui_resume(request: Request, job_id: str) -> HTMLResponse:
    job = _own(request, job_id)
    reopen(store(request), job_id, job.owner, request.app.state.config, request.app.state.platform)
    return _live(request, job_id)


@router.post("/ui/jobs/{job_id}/publish", response_class=HTMLResponse)
def ui_publish(request: Request, job_id: str) -> HTMLResponse:
    _own(request, job_id)
    publish(store(request), job_id)
    return _live(request, job_id)


@router.get("/ui/jobs/{job_id}/bundle")
def ui_bundle(request: Request, job_id: str) -> FileResponse:
    return bundle_response(_own(request, job_id))


@router.get("/ui/jobs/{job_id}/checkpoint")
def ui_checkpoint(request: Request, job_id: str, step: int) -> FileResponse:
    from loraflow.publish.bundle import build_bundle

    path = build_bundle(store(request), _own(request, job_id), step)
    return FileResponse(path, media_type="application/zip", filename=Path(path).name)


@router.get("/ui/jobs/{job_id}/files/{path:path}")
def ui_file(request: Request, job_id: str, path: str) -> FileResponse:
    return job_file_response(_own(request, job_id), path)


def _sample_index(samples: Path) -> list[dict[str, Any]]:
    """What each sample image was prompted with (step-*/index.json, written by every engine's sampling)."""
    items: list[dict[str, Any]] = []
    for index in sorted(samples.glob("step-*/index.json")):
        try:
            items += json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being written right now: the next refresh has it
    return items


def _log_line(e: Any) -> str:
    ts = e.ts.strftime("%H:%M:%S") if isinstance(e.ts, datetime) else ""
    detail = e.data.get("message") or e.data.get("stage") or e.data.get("to") or ""
    return f"{ts} {e.type} {detail}"
