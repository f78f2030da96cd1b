"""The web UI: server-rendered pages refreshed by htmx, so everything a page shows comes from the store
and a browser refresh, a closed laptop or a server restart loses nothing.

Login turns an API token into a web session: a separate, revocable token kept in an HttpOnly,
SameSite=Strict cookie (logging out revokes it).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraflow import paths
from loraflow.errors import IllegalTransition, LoraflowError, NotFound, SpecError, UserInputError
from loraflow.jobs.states import ACTIVE, RESUMABLE, JobState
from loraflow.jobs.store import Job, Store
from loraflow.server import docs, uploads
from loraflow.server.charts import loss_chart
from loraflow.server.deps import bundle_response, job_file_response, own_job
from loraflow.server.problems import Problem
from loraflow.server.tokens import User, create_token, lookup, revoke_by_token
from loraflow.server.wizard import ADVANCED, CaptionRun, kept_input, model_defaults, start_error

HERE = Path(__file__).parent
COOKIE = "loraflow_session"
PER_PAGE = 50


def install(app: FastAPI) -> None:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    docs.install(app)  # before /static: its assets live under /static/swagger-ui
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def store() -> Store:
        return app.state.store

    from loraflow.jobs.queue import entry as queue_entry

    templates.env.globals["queue_of"] = lambda job: queue_entry(store(), job)  # _job_live.html's queue line

    def session_user(request: Request) -> User | None:
        if app.state.config.no_auth:
            return User("local", admin=True)
        token = request.cookies.get(COOKIE)
        return lookup(store(), token) if token else None

    def render(request: Request, template: str, user: User | None, **ctx: Any) -> HTMLResponse:
        single = app.state.config.no_auth
        return templates.TemplateResponse(request, template, {"user": user, "single_user": single, **ctx})

    def browser_errors(error_type: type[Exception]) -> None:
        """A person who opens a page gets an HTML page with the problem, never raw problem JSON; the API,
        htmx requests and programs keep the RFC 9457 answer."""
        api_handler = app.exception_handlers[error_type]

        async def handler(request: Request, exc: Exception) -> Response:
            answer = await api_handler(request, exc)
            wants_page = "text/html" in request.headers.get("accept", "") and "hx-request" not in request.headers
            if request.url.path.startswith("/api/") or not wants_page:
                return answer
            body = json.loads(bytes(answer.body))
            ctx = {"title": str(body.get("title") or "error").capitalize(), "detail": body.get("detail")}
            page = render(request, "error.html", session_user_or_none(request), **ctx, status_code=answer.status_code)
            page.status_code = answer.status_code
            return page

        app.add_exception_handler(error_type, handler)

    def session_user_or_none(request: Request) -> User | None:
        try:
            return session_user(request)
        except Exception:  # the error page must render even when the store does not answer
            return None

    for error_type in (Problem, SpecError, NotFound, IllegalTransition, UserInputError, LoraflowError):
        browser_errors(error_type)
    browser_errors(StarletteHTTPException)

    def need_user(request: Request) -> User:
        user = session_user(request)
        if user is None:
            raise Problem(401, "unauthorized", "log in first")
        return user

    def own(user: User, job_id: str) -> Job:
        return own_job(store(), user, job_id)

    def upload_dir(user: User, upload_id: str) -> Path:
        return uploads.folder(user.name, upload_id)

    # --- session -----------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request) -> HTMLResponse:
        return render(request, "login.html", None, error=None)

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: str = Form("")) -> Response:
        user = lookup(store(), token.strip())
        if user is None:
            return render(request, "login.html", None, error="That token is not valid.")
        session = create_token(store(), user.name, label="web session", admin=user.admin)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, session, httponly=True, samesite="strict", max_age=30 * 86400)
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        token = request.cookies.get(COOKIE)
        if token:
            revoke_by_token(store(), token)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    # --- jobs --------------------------------------------------------------------------------

    def jobs_context(user: User, page_no: int) -> dict[str, Any]:
        page_no = max(page_no, 1)
        jobs = store().list_jobs(owner=user.name, limit=PER_PAGE, offset=(page_no - 1) * PER_PAGE)
        return {"jobs": jobs, "page": page_no, "per_page": PER_PAGE, "total": store().count_jobs(owner=user.name)}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request, page: int = 1) -> Response:
        user = session_user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        return render(request, "jobs.html", user, **jobs_context(user, page))

    @app.get("/ui/jobs/rows", response_class=HTMLResponse, include_in_schema=False)
    def job_rows(request: Request, page: int = 1) -> HTMLResponse:
        user = need_user(request)
        return templates.TemplateResponse(request, "_job_rows.html", jobs_context(user, page))

    def live_context(job: Job) -> dict[str, Any]:
        folder = paths.job_dir(job.id)
        progress = store().events(job.id, types=["progress"], limit=5000)
        samples: dict[int, list[dict[str, str]]] = {}
        prompts = {i["file"]: str(i.get("prompt") or "") for i in _sample_index(folder / "samples")}
        for path in sorted((folder / "samples").glob("step-*/*.png")):
            key = f"{path.parent.name}/{path.name}"
            samples.setdefault(int(path.parent.name.split("-")[1]), []).append(
                {"file": f"samples/{key}", "prompt": prompts.get(key, "")}
            )
        checkpoints = sorted(
            int(p.name.split("-")[1]) for p in (folder / "checkpoints").glob("step-*") if (p / "meta.json").exists()
        )
        log = store().events(job.id, types=["log", "warning", "error", "stage.started", "job.state"], latest=False)
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
            "log": [_log_line(e) for e in log[-40:]],
        }

    @app.get("/jobs/{job_id}", response_class=HTMLResponse, include_in_schema=False)
    def job_page(request: Request, job_id: str) -> Response:
        user = session_user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        return render(request, "job.html", user, **live_context(own(user, job_id)))

    @app.get("/ui/jobs/{job_id}/live", response_class=HTMLResponse, include_in_schema=False)
    def job_live(request: Request, job_id: str) -> HTMLResponse:
        job = own(need_user(request), job_id)
        return templates.TemplateResponse(request, "_job_live.html", live_context(job))

    @app.post("/ui/jobs/{job_id}/stop", response_class=HTMLResponse, include_in_schema=False)
    def ui_stop(request: Request, job_id: str) -> HTMLResponse:
        from loraflow.running.control import request_stop

        job = own(need_user(request), job_id)
        if job.state in ACTIVE:
            request_stop(job_id)
        return templates.TemplateResponse(request, "_job_live.html", live_context(store().get(job_id)))

    @app.post("/ui/jobs/{job_id}/resume", response_class=HTMLResponse, include_in_schema=False)
    def ui_resume(request: Request, job_id: str) -> HTMLResponse:
        from loraflow.running.control import resume

        if own(need_user(request), job_id).state in RESUMABLE:
            resume(store(), job_id)
        return templates.TemplateResponse(request, "_job_live.html", live_context(store().get(job_id)))

    @app.post("/ui/jobs/{job_id}/publish", response_class=HTMLResponse, include_in_schema=False)
    def ui_publish(request: Request, job_id: str) -> HTMLResponse:
        from loraflow.publish.publisher import publish_job

        job = own(need_user(request), job_id)
        publish_job(store(), job)
        return templates.TemplateResponse(request, "_job_live.html", live_context(store().get(job_id)))

    @app.get("/ui/jobs/{job_id}/bundle", include_in_schema=False)
    def ui_bundle(request: Request, job_id: str) -> FileResponse:
        return bundle_response(own(need_user(request), job_id))

    @app.get("/ui/jobs/{job_id}/checkpoint", include_in_schema=False)
    def ui_checkpoint(request: Request, job_id: str, step: int) -> FileResponse:
        from loraflow.publish.bundle import build_bundle

        job = own(need_user(request), job_id)
        path = build_bundle(store(), job, step)
        return FileResponse(path, media_type="application/zip", filename=Path(path).name)

    @app.get("/ui/jobs/{job_id}/files/{path:path}", include_in_schema=False)
    def ui_file(request: Request, job_id: str, path: str) -> FileResponse:
        return job_file_response(own(need_user(request), job_id), path)

    # --- new job wizard ----------------------------------------------------------------------

    @app.get("/new", response_class=HTMLResponse, include_in_schema=False)
    def new_job(request: Request) -> Response:
        user = session_user(request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        return render(request, "new.html", user, error=None)

    @app.post("/ui/uploads", include_in_schema=False)
    async def ui_upload(request: Request) -> Response:
        user = need_user(request)
        form = await request.form()
        files = [f for f in form.getlist("files") if isinstance(f, StarletteUpload) and f.filename]
        if not files:
            return render(request, "new.html", user, error="Choose some images (and captions) first.")
        try:
            upload_id, _dataset = await uploads.create(user.name, files, app.state.config.max_upload_mb << 20)
        except Problem as exc:
            return render(request, "new.html", user, error=exc.detail)
        return RedirectResponse(f"/ui/uploads/{upload_id}", status_code=303)

    @app.get("/ui/uploads/{upload_id}", response_class=HTMLResponse, include_in_schema=False)
    def wizard(request: Request, upload_id: str) -> HTMLResponse:
        user = need_user(request)
        folder = upload_dir(user, upload_id)
        return render(request, "wizard.html", user, **wizard_context(folder, upload_id))

    @app.post("/ui/uploads/{upload_id}/caption/{name}", include_in_schema=False)
    def save_caption(request: Request, upload_id: str, name: str, caption: str = Form("")) -> Response:
        uploads.write_caption(upload_dir(need_user(request), upload_id), name, caption)
        return Response(status_code=204)

    @app.get("/ui/uploads/{upload_id}/image/{name}", include_in_schema=False)
    def upload_image(request: Request, upload_id: str, name: str) -> FileResponse:
        return FileResponse(uploads.image(upload_dir(need_user(request), upload_id), name))

    caption_runs: dict[str, CaptionRun] = {}

    def caption_status(request: Request, upload_id: str, folder: Path, error: str | None = None) -> HTMLResponse:
        run = caption_runs.get(str(folder))
        ctx: dict[str, Any] = {"upload_id": upload_id, "run": run, "error": error or (run and run.error)}
        if run and run.finished and not run.error:
            ctx |= {"items": wizard_context(folder, upload_id)["items"], "oob": True}
        response = templates.TemplateResponse(request, "_caption_status.html", ctx)
        response.status_code = 422 if error else 200
        return response

    @app.post("/ui/uploads/{upload_id}/autocaption", response_class=HTMLResponse, include_in_schema=False)
    def autocaption(request: Request, upload_id: str, backend: str = Form("template")) -> HTMLResponse:
        """Start captioning in the background; the answer polls its progress and ends with the captions."""
        from loraflow.caption.available import operator_model, why_not
        from loraflow.spec import CaptionPolicy

        folder = upload_dir(need_user(request), upload_id)
        reason = why_not(backend)
        if reason:
            return caption_status(request, upload_id, folder, f"{backend} cannot caption on this server: {reason}")
        running = caption_runs.get(str(folder))
        if running is None or running.finished:
            policy = CaptionPolicy(backend=backend, mode="fill_missing", model=operator_model(backend))
            caption_runs[str(folder)] = CaptionRun(backend).start(folder, policy)
        return caption_status(request, upload_id, folder)

    @app.get("/ui/uploads/{upload_id}/autocaption", response_class=HTMLResponse, include_in_schema=False)
    def autocaption_progress(request: Request, upload_id: str) -> HTMLResponse:
        return caption_status(request, upload_id, upload_dir(need_user(request), upload_id))

    def settings_spec(folder: Path, form: dict[str, Any]) -> dict[str, Any]:
        training: dict[str, Any] = {}
        for key, value in form.items():
            if key.startswith("training.") and str(value).strip():
                text = str(value).strip()
                try:
                    training[key.split(".", 1)[1]] = json.loads(text)
                except ValueError:
                    training[key.split(".", 1)[1]] = text
        raw: dict[str, Any] = {
            "name": str(form.get("name") or "lora").strip(),
            "dataset": {"path": str(folder), "trigger_word": str(form.get("trigger_word") or "").strip() or None},
            "base_model": str(form.get("base_model") or "tiny-flux"),
        }
        if form.get("vram_preset"):
            raw["vram_preset"] = int(str(form["vram_preset"]))
        if training:
            raw["training"] = training
        return raw

    @app.post("/ui/uploads/{upload_id}/estimate", response_class=HTMLResponse, include_in_schema=False)
    async def ui_estimate(request: Request, upload_id: str) -> HTMLResponse:
        from loraflow.providers.estimate import local_estimate
        from loraflow.spec import parse_spec

        folder = upload_dir(need_user(request), upload_id)
        try:
            spec = parse_spec(settings_spec(folder, dict(await request.form())), "settings")
        except Exception as exc:  # shown next to the button
            return HTMLResponse(f'<span class="error">{_escape(str(exc))}</span>')
        try:
            est = local_estimate(spec)  # the wizard's jobs run on this server
        except UserInputError as exc:
            return HTMLResponse(f'<span class="error">{_escape(exc.render())}</span>')
        return HTMLResponse(
            f'<span id="estimate-text">about {est.total_s / 60:.1f} min on this server\'s {_escape(est.gpu)}</span>'
        )

    @app.post("/ui/uploads/{upload_id}/start", include_in_schema=False)
    async def ui_start(request: Request, upload_id: str) -> Response:
        from loraflow.running.submit import read_spec, submit

        user = need_user(request)
        folder = upload_dir(user, upload_id)
        state = app.state
        form = dict(await request.form())
        try:
            spec = read_spec(settings_spec(folder, form), state.config, "settings")
            job = submit(store(), spec, user.name, state.config, state.platform, False)
        except (Problem, UserInputError) as exc:
            # Shown where the user pressed Start, with everything they typed still in the form.
            ctx = {**wizard_context(folder, upload_id), **kept_input(form)}
            response = render(request, "wizard.html", user, **ctx, error=start_error(exc))
            response.status_code = getattr(exc, "status", 422)
            return response
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    def wizard_context(folder: Path, upload_id: str) -> dict[str, Any]:
        from loraflow.caption.available import captioner_status
        from loraflow.catalog import base_models, vram_presets
        from loraflow.dataset import DatasetRun
        from loraflow.spec import TrainingSpec

        report = DatasetRun(str(folder)).check()
        items = [{"name": name, "caption": text} for name, text in uploads.captions(folder).items()]
        models = list(base_models().values())
        defaults = model_defaults()
        advanced = [
            {"key": k, "default": defaults[models[0].id][k], "help": f.description or ""}
            for k, f in TrainingSpec.model_fields.items()
            if k in ADVANCED
        ]
        status = captioner_status()
        return {
            "upload_id": upload_id,
            "report": report,
            "items": items,
            "captioners": [name for name, reason in status.items() if reason is None],
            "not_here": {name: reason for name, reason in status.items() if reason is not None},
            "trigger": "",
            "name": "lora",
            "models": models,
            "model_defaults": defaults,
            "chosen_model": models[0].id,
            "chosen_preset": "",
            "values": {},
            "presets": sorted(vram_presets()),
            "advanced": advanced,
        }


def _sample_index(samples: Path) -> list[dict[str, Any]]:
    """What each sample image was prompted with (step-*/index.json, written by every engine's sampling)."""
    items: list[dict[str, Any]] = []
    for index in sorted(samples.glob("step-*/index.json")):
        try:
            items += json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # being written right now: the next refresh has it
    return items


def _escape(text: str) -> str:
    import html

    return html.escape(text)


def _log_line(e: Any) -> str:
    ts = e.ts.strftime("%H:%M:%S") if isinstance(e.ts, datetime) else ""
    detail = e.data.get("message") or e.data.get("stage") or e.data.get("to") or ""
    return f"{ts} {e.type} {detail}"
