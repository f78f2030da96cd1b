"""The web UI's new-job wizard: upload images, edit or auto-caption them, estimate, start the job.

(No `from __future__ import annotations`: FastAPI reads the route annotations at runtime.)
"""

from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.datastructures import UploadFile as StarletteUpload

from loraflow.errors import UserInputError
from loraflow.server import uploads
from loraflow.server.pages import fragment, need_user, render, session_user, store
from loraflow.server.problems import Problem
from loraflow.server.web_security import check_csrf
from loraflow.server.wizard import (
    CaptionRun,
    kept_input,
    settings_spec,
    start_error,
    upload_pairs,
    wizard_context,
)

router = APIRouter(include_in_schema=False, dependencies=[Depends(check_csrf)])


def _upload_dir(request: Request, upload_id: str) -> Path:
    return uploads.folder(need_user(request).name, upload_id)


@router.get("/new", response_class=HTMLResponse)
def new_job(request: Request) -> Response:
    user = session_user(request)
    if user is None:
        return RedirectResponse("/login", status_code=303)
    return render(request, "new.html", user, error=None)


@router.post("/ui/uploads")
async def ui_upload(request: Request) -> Response:
    user = need_user(request)
    form = await request.form()
    files = [f for f in form.getlist("files") if isinstance(f, StarletteUpload) and f.filename]
    controls = [f for f in form.getlist("controls") if isinstance(f, StarletteUpload) and f.filename]
    if not files:
        return render(request, "new.html", user, error="Choose some images (and captions) first.")
    quotas = request.app.state.quotas
    try:
        quotas.upload(user.name)
        limit = request.app.state.config.max_upload_mb << 20
        upload_id, _dataset = await uploads.create(user.name, files, limit, quotas, controls)
    except Problem as exc:
        return render(request, "new.html", user, error=exc.detail)
    return RedirectResponse(f"/ui/uploads/{upload_id}", status_code=303)


@router.get("/ui/uploads/{upload_id}", response_class=HTMLResponse)
def wizard(request: Request, upload_id: str) -> HTMLResponse:
    user = need_user(request)
    folder = uploads.folder(user.name, upload_id)
    with request.app.state.quotas.work(user.name):  # the dataset check: a worker thread (plain def), bounded
        context = wizard_context(folder, upload_id, request.app.state.config)
    return render(request, "wizard.html", user, **context)


def _report(request: Request, folder: Path) -> str:
    """The dataset report, rendered to replace the page's own (hx-swap-oob): fresh after every change. Called
    from plain `def` routes (a worker thread), bounded like every dataset check."""
    from loraflow.dataset import DatasetRun

    with request.app.state.quotas.work(need_user(request).name):
        report = DatasetRun(str(folder), pairs=upload_pairs(folder)).check()
    return fragment(request, "_report.html", {"report": report, "oob": True}).body.decode()


@router.post("/ui/uploads/{upload_id}/caption/{name}", response_class=HTMLResponse)
def save_caption(request: Request, upload_id: str, name: str, caption: str = Form("")) -> HTMLResponse:
    folder = _upload_dir(request, upload_id)
    uploads.write_caption(folder, name, caption)
    return HTMLResponse(_report(request, folder))


@router.post("/ui/uploads/{upload_id}/remove/{name}", response_class=HTMLResponse)
def remove_image(request: Request, upload_id: str, name: str) -> HTMLResponse:
    """Take one image (and its caption) out of the upload; the grid loses its tile, the report is redone."""
    folder = _upload_dir(request, upload_id)
    uploads.remove(folder, name)
    return HTMLResponse(_report(request, folder))


@router.post("/ui/uploads/{upload_id}/recaption/{name}", response_class=HTMLResponse)
def recaption_image(request: Request, upload_id: str, name: str, backend: str = Form("template")) -> HTMLResponse:
    """Caption one image again: its caption is cleared and the captioner fills what is missing (this one)."""
    folder = _upload_dir(request, upload_id)
    uploads.image(folder, name).with_suffix(".txt").unlink(missing_ok=True)
    return autocaption(request, upload_id, backend)


@router.get("/ui/uploads/{upload_id}/image/{name}")
def upload_image(request: Request, upload_id: str, name: str) -> FileResponse:
    return FileResponse(uploads.image(_upload_dir(request, upload_id), name))


@router.get("/ui/uploads/{upload_id}/control/{name}")
def upload_control(request: Request, upload_id: str, name: str) -> FileResponse:
    """An edit pair's control image (the image before the edit), shown beside its target."""
    return FileResponse(uploads.control_image(_upload_dir(request, upload_id), name))


def _caption_status(request: Request, upload_id: str, folder: Path, error: str | None = None) -> HTMLResponse:
    run: CaptionRun | None = request.app.state.caption_runs.get(str(folder))
    ctx: dict[str, Any] = {"upload_id": upload_id, "run": run, "error": error or (run and run.error)}
    if run and run.finished and not run.error:
        done = wizard_context(folder, upload_id)  # one dataset check for both the grid and the report
        ctx |= {"items": done["items"], "report": done["report"], "paired": done["paired"], "oob": True}
    response = fragment(request, "_caption_status.html", ctx)
    response.status_code = 422 if error else 200
    return response


@router.post("/ui/uploads/{upload_id}/autocaption", response_class=HTMLResponse)
def autocaption(request: Request, upload_id: str, backend: str = Form("template")) -> HTMLResponse:
    """Start captioning in the background; the answer polls its progress and ends with the captions."""
    from loraflow.caption.available import operator_model, why_not
    from loraflow.spec import CaptionPolicy

    folder = _upload_dir(request, upload_id)
    reason = why_not(backend)
    if reason:
        return _caption_status(request, upload_id, folder, f"{backend} cannot caption on this server: {reason}")
    runs: dict[str, CaptionRun] = request.app.state.caption_runs
    running = runs.get(str(folder))
    if running is None or running.finished:
        policy = CaptionPolicy(backend=backend, mode="fill_missing", model=operator_model(backend))
        runs[str(folder)] = CaptionRun(backend).start(folder, policy)
    return _caption_status(request, upload_id, folder)


@router.get("/ui/uploads/{upload_id}/autocaption", response_class=HTMLResponse)
def autocaption_progress(request: Request, upload_id: str) -> HTMLResponse:
    return _caption_status(request, upload_id, _upload_dir(request, upload_id))


@router.post("/ui/uploads/{upload_id}/estimate", response_class=HTMLResponse)
async def ui_estimate(request: Request, upload_id: str) -> HTMLResponse:
    from loraflow.providers.estimate import local_estimate
    from loraflow.providers.registry import is_rented
    from loraflow.spec import parse_spec

    folder = _upload_dir(request, upload_id)
    try:
        spec = parse_spec(settings_spec(folder, dict(await request.form())), "settings")
    except Exception as exc:  # shown next to the button
        return HTMLResponse(f'<span class="error">{_escape(str(exc))}</span>')
    try:
        if is_rented(spec.compute.provider):  # an HTTP search: off the event loop
            granted = request.app.state.config.grants.providers
            return HTMLResponse(await anyio.to_thread.run_sync(_rented_estimate, spec, granted))
        est = local_estimate(spec)  # trains on this server (or the operator's SSH host)
    except UserInputError as exc:
        text = exc.message
        if spec.compute.provider == "local" and "compute.provider" in (exc.fix or ""):
            text += ". Choose a rented GPU under “Where to train”, or a smaller model."
        return HTMLResponse(f'<span class="error">{_escape(text)}</span>')
    return HTMLResponse(
        f'<span id="estimate-text">about {est.total_s / 60:.1f} min on this server\'s {_escape(est.gpu)}</span>'
    )


def _rented_estimate(spec: Any, granted: frozenset[str]) -> str:
    """The cheapest fitting offer's time and price in one sentence, then the other providers the service
    offers at their cheapest (the CLI's `estimate` has the whole table)."""
    from loraflow.engines import engine_needs
    from loraflow.providers.compare import compare
    from loraflow.providers.registry import offered

    own, *others = compare(spec, engine_needs, offered(granted, spec.compute.provider))
    if own.error or not own.best:
        reason = own.error.render() if own.error else "no offer fits this job"
        text = f'<span class="error">No price from {_escape(own.title)} now: {_escape(reason)}</span>'
    else:
        best, est = own.best[0], own.best[0].estimate
        text = (
            f'<span id="estimate-text">about {est.total_s / 60:.0f} min and ${est.cost_usd:.2f} on a rented '
            f"{_escape(best.gpu)} at ${est.usd_per_hour:.3f}/h</span>"
        )
    elsewhere = []
    for f in others:
        if f.best:
            cheapest = min(f.best, key=lambda r: r.estimate.cost_usd)
            elsewhere.append(f"{_escape(f.title)} ${cheapest.estimate.cost_usd:.2f} ({_escape(cheapest.gpu)})")
    if elsewhere:
        text += f'<span id="estimate-elsewhere"> · elsewhere: {"; ".join(elsewhere)}</span>'
    return text


@router.post("/ui/uploads/{upload_id}/start")
async def ui_start(request: Request, upload_id: str) -> Response:
    from loraflow.running.submit import read_spec, submit

    user = need_user(request)
    folder = uploads.folder(user.name, upload_id)
    state = request.app.state
    form = dict(await request.form())

    def start() -> Any:
        spec = read_spec(settings_spec(folder, form), state.config, "settings")
        engine_here(spec)
        return submit(store(request), spec, user.name, state.config, state.platform, False)

    try:
        job = await state.quotas.off_loop(user.name, start)  # the dataset check runs in a worker thread
    except (Problem, UserInputError) as exc:
        # Shown at the top of the page the user lands on, with everything they typed still in the form.
        context = await anyio.to_thread.run_sync(wizard_context, folder, upload_id, state.config)
        ctx = {**context, **kept_input(form)}
        response = render(request, "wizard.html", user, **ctx, error=start_error(exc))
        response.status_code = getattr(exc, "status", 422)
        return response
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


def engine_here(spec: Any) -> None:
    """A web user cannot install an engine: say so in their words, not with the operator's command."""
    from loraflow.engines.installed import EngineNotInstalled, require_engine

    try:
        require_engine(spec)
    except EngineNotInstalled as exc:
        raise UserInputError(
            f"this server has no {exc.engine} installed, so it cannot train {spec.base_model} with it here",
            where="engine",
            fix="choose another engine (builtin trains on this server), train on a rented GPU, or ask the "
            "operator to install it",
        ) from None


def _escape(text: str) -> str:
    import html

    return html.escape(text)
