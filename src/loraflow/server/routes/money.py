"""What a job costs: estimates and Vast.ai offers before a job, quotes in points, the credit ledger
(deposits, adjustments and refunds by an administrator).

(No `from __future__ import annotations`: FastAPI reads the route annotations at runtime.)
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from loraflow.errors import UserInputError
from loraflow.platform import credits
from loraflow.server.deps import Admin, Auth, Db
from loraflow.server.problems import spec_mapping

router = APIRouter()


@router.post("/api/estimate", tags=["money"])
def estimate(
    request: Request, user: Auth, spec: Annotated[str, Body(embed=True, description="The spec as YAML or JSON")]
) -> dict[str, Any]:
    """Predicted time and cost per GPU type on offer, or on this machine.

    For a rented job, `estimates` are the spec's own provider's and `providers` lists every provider the
    service offers side by side (one without an answer carries its reason in `note`)."""
    from loraflow.providers.estimate import estimate as predict

    parsed = _read(request, user.name, spec)
    if parsed.engine.name == "fal":  # priced per run by fal, not by the hour
        from loraflow.engines.fal import quote

        return {"budget_usd": parsed.budget.max_usd, "estimates": [quote(parsed)]}
    from loraflow.providers.registry import is_rented

    if is_rented(parsed.compute.provider):
        from loraflow.engines import engine_needs
        from loraflow.providers.compare import compare, side_by_side
        from loraflow.providers.registry import offered

        # Every rented provider the operator offers, asked at once; the spec's own answers as "estimates".
        granted = request.app.state.config.grants.providers
        found = compare(parsed, engine_needs, offered(granted, parsed.compute.provider))
        own = found[0]
        if own.error:
            raise own.error
        return {
            "budget_usd": parsed.budget.max_usd,
            "estimates": [r.estimate.to_dict() for r in own.best],
            "providers": side_by_side(found),
        }
    gpu = "CPU" if parsed.base_model == "tiny-flux" else "RTX 4090"
    return {"budget_usd": parsed.budget.max_usd, "estimates": [predict(parsed, gpu, 0.0, remote=False).to_dict()]}


@router.get("/api/offers", tags=["money"])
def offers(
    request: Request,
    user: Auth,
    base_model: str = "flux-dev",
    provider: str = "vastai",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> list[Any]:
    """One provider's offers that fit a default job on this base model, cheapest job first."""
    from loraflow.engines import engine_needs
    from loraflow.providers.registry import offered, provider_for
    from loraflow.spec import parse_spec

    granted = offered(request.app.state.config.grants.providers)
    if provider not in granted:
        raise UserInputError(f"provider '{provider}' is not offered on this service", where="provider",
                             fix=f"use one of: {', '.join(granted) or 'none'}")  # fmt: skip
    spec = parse_spec(
        {"name": "offers", "dataset": {"path": NO_DATASET_YET}, "base_model": base_model,
         "compute": {"provider": provider}},
        "offers",
    )  # fmt: skip
    ranked = provider_for(provider, needs=engine_needs).offers(spec)[:limit]
    return [{"offer": r.offer, "estimate": r.estimate.to_dict()} for r in ranked]


@router.post("/api/quote", tags=["credits"])
def quote(request: Request, user: Auth, spec: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
    """What a job would cost in USD and points before it is submitted (estimate or budget cap, plus fee)."""
    # The same reading as a submission (the service's rules and caps apply), so the quote is what a job costs.
    parsed = _read(request, user.name, spec)
    return credits.quote(parsed, request.app.state.platform).to_dict()


NO_DATASET_YET = "/nonexistent/loraflow-quote-has-no-dataset"


def _read(request: Request, user: str, text: str) -> Any:
    """The spec text read as a submission reads it, under one of the user's work slots (this runs in a
    worker thread: the routes are plain `def`); dataset_path ".": the server's paths are not asked."""
    from loraflow.running.submit import read_spec

    cfg = request.app.state.config
    with request.app.state.quotas.work(user):
        raw = spec_mapping(text, cfg.maxima.spec_bytes, cfg.maxima.spec_nodes)
        # No dataset yet: a path that is not there, so the estimate takes a typical dataset's size. "." made it
        # count every image under the server's working folder (its venv included) on every quote.
        return read_spec(raw, cfg, "spec", dataset_path=NO_DATASET_YET)


@router.get("/api/credits", tags=["credits"])
def my_credits(user: Auth, store: Db, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    return {
        "user": user.name,
        **credits.balance(store, user.name).to_dict(),
        "entries": credits.entries(store, user.name, limit),
    }


@router.post("/api/credits/{name}/deposit", tags=["credits"])
def deposit(
    name: str,
    admin: Admin,
    store: Db,
    points: Annotated[int, Body(embed=True, gt=0)],
    note: Annotated[str, Body(embed=True)] = "",
) -> dict[str, Any]:
    return credits.add_entry(store, name, "deposit", points, by=admin.name, note=note).to_dict()


@router.post("/api/credits/{name}/adjust", tags=["credits"])
def adjust(
    name: str, admin: Admin, store: Db, points: Annotated[int, Body(embed=True)], note: Annotated[str, Body(embed=True)]
) -> dict[str, Any]:
    return credits.add_entry(store, name, "adjustment", points, by=admin.name, note=note).to_dict()


@router.post("/api/credits/{name}/refund", tags=["credits"])
def refund(
    name: str,
    admin: Admin,
    store: Db,
    job_id: Annotated[str, Body(embed=True)],
    points: Annotated[int, Body(embed=True, gt=0)],
    note: Annotated[str, Body(embed=True)] = "",
) -> dict[str, Any]:
    """Refund (part of) a job's charge to its owner."""
    return credits.refund(store, name, job_id, points, admin.name, note).to_dict()
