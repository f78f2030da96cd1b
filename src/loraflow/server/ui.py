"""The web UI: server-rendered pages refreshed by htmx, so everything a page shows comes from the store
and a browser refresh, a closed laptop or a server restart loses nothing.

Login turns an API token into a web session: a separate, revocable token kept in an HttpOnly,
SameSite=Strict cookie (logging out revokes it). The pages are server/routes/ui.py (session and jobs)
and server/routes/wizard.py (a new job); this module mounts them on an API app.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraflow.errors import IllegalTransition, LoraflowError, NotFound, SpecError, UserInputError
from loraflow.server import docs
from loraflow.server.pages import HERE, render, session_user_or_none
from loraflow.server.problems import Problem
from loraflow.server.routes import ui, wizard


def install(app: FastAPI) -> None:
    """Add the pages, their assets and the offline API reference to an app made by `create_app`."""
    docs.install(app)  # before /static: its assets live under /static/swagger-ui
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.caption_runs = {}  # upload folder -> its auto-caption run
    for error_type in (Problem, SpecError, NotFound, IllegalTransition, UserInputError, LoraflowError):
        _browser_errors(app, error_type)
    _browser_errors(app, StarletteHTTPException)
    app.include_router(ui.router)
    app.include_router(wizard.router)


def _browser_errors(app: FastAPI, error_type: type[Exception]) -> None:
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
