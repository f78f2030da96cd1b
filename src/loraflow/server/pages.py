"""What every web UI page shares: the templates, the session cookie that says who is looking, and
rendering a page or an htmx fragment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context

from loraflow.jobs.store import Store
from loraflow.server.problems import Problem
from loraflow.server.tokens import User, lookup_session
from loraflow.server.web_security import COOKIE, request_token

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


@pass_context
def _queue_of(ctx: Any, job: Any) -> Any:
    """_job_live.html's queue line, read from the store of the app that renders the page."""
    from loraflow.jobs.queue import entry

    return entry(ctx["request"].app.state.store, job)


templates.env.globals["queue_of"] = _queue_of


def store(request: Request) -> Store:
    return request.app.state.store


def session_user(request: Request) -> User | None:
    if request.app.state.config.no_auth:
        return User("local", admin=True)
    token = request.cookies.get(COOKIE)
    return lookup_session(store(request), token) if token else None


def session_user_or_none(request: Request) -> User | None:
    try:
        return session_user(request)
    except Exception:  # the error page must render even when the store does not answer
        return None


def need_user(request: Request) -> User:
    user = session_user(request)
    if user is None:
        raise Problem(401, "unauthorized", "log in first")
    return user


def render(request: Request, template: str, user: User | None, **ctx: Any) -> HTMLResponse:
    """A whole page, with who is logged in and whether this is a single-user (no-auth) server."""
    single = request.app.state.config.no_auth
    ctx = {"user": user, "single_user": single, "csrf": request_token(request), **ctx}
    return templates.TemplateResponse(request, template, ctx)


def fragment(request: Request, template: str, ctx: dict[str, Any]) -> HTMLResponse:
    """A piece of a page that htmx swaps in."""
    return templates.TemplateResponse(request, template, {"csrf": request_token(request), **ctx})
