"""Errors as RFC 9457 problem details, so a platform's client reads one shape for every failure."""

from __future__ import annotations

from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from loraflow.errors import IllegalTransition, LoraflowError, NotFound, Refused, SpecError, UserInputError
from loraflow.jobs.outage import StoreUnavailable
from loraflow.spec.loading import SpecTooBig, check_bounds, read_yaml

PROBLEM = "application/problem+json"


def bounded(raw: Any, max_nodes: int = 5_000) -> Any:
    """A spec that came as JSON (already parsed), held to the same bounds as spec text (413 past them)."""
    try:
        check_bounds(raw, max_nodes)
    except SpecTooBig as exc:
        raise Problem(413, "spec too large", str(exc)) from None
    return raw


def spec_mapping(text: str, max_bytes: int = 64 << 10, max_nodes: int = 5_000) -> dict[str, Any]:
    """A spec sent as text (YAML or JSON): a mapping, or a 422 that says what is wrong with the text,
    before any field is read (a stray tab or a bare list is the sender's to fix, not a server error).

    The one reader of spec text in the service: bounded in bytes, in values with YAML aliases expanded
    and in depth (spec/loading.py), so an alias bomb or a 4 MB spec is refused in microseconds."""
    try:
        raw, duplicates = read_yaml(text, max_bytes, max_nodes)
    except SpecTooBig as exc:
        raise Problem(413, "spec too large", f"{exc}; write a smaller spec (no YAML aliases needed)") from None
    except yaml.YAMLError as exc:
        raise Problem(422, "invalid spec", f"the spec is not valid YAML/JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise Problem(422, "invalid spec", "the spec must be a mapping (name, dataset, base_model, ...)")
    if duplicates:
        raise Problem(422, "invalid spec", "; ".join(duplicates), errors=duplicates)
    return raw


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str = "", **extra: Any) -> None:
        self.status, self.title, self.detail, self.extra = status, title, detail, extra
        super().__init__(detail or title)


def problem(status: int, title: str, detail: str = "", instance: str = "", **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, "instance": instance, **extra}
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if extra.get("retry_after"):
        headers["Retry-After"] = str(extra["retry_after"])
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem(exc.status, exc.title, exc.detail, request.url.path, **exc.extra)

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        return problem(exc.status, exc.title, exc.render(), request.url.path, **exc.extra)

    @app.exception_handler(SpecError)
    async def _spec(request: Request, exc: SpecError) -> JSONResponse:
        return problem(422, "invalid spec", exc.message, request.url.path, errors=exc.problems)

    @app.exception_handler(NotFound)
    async def _missing(request: Request, exc: NotFound) -> JSONResponse:
        return problem(404, "not found", exc.message, request.url.path)

    @app.exception_handler(IllegalTransition)
    async def _conflict(request: Request, exc: IllegalTransition) -> JSONResponse:
        return problem(409, "conflict", exc.message, request.url.path)

    @app.exception_handler(UserInputError)
    async def _bad(request: Request, exc: UserInputError) -> JSONResponse:
        return problem(400, "bad request", exc.render(), request.url.path)

    @app.exception_handler(StoreUnavailable)
    async def _store_away(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return problem(503, "store unavailable", exc.render(), request.url.path)

    @app.exception_handler(LoraflowError)
    async def _failed(request: Request, exc: LoraflowError) -> JSONResponse:
        return problem(502, "upstream failure", exc.render(), request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return problem(422, "invalid request", "; ".join(errors), request.url.path, errors=errors)

    @app.exception_handler(RecursionError)
    async def _deep(request: Request, exc: RecursionError) -> JSONResponse:
        return problem(422, "too deeply nested", "the request nests values too deeply", request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), "", request.url.path)
