"""Platform API routes: quotes and credits, the model registry and its review gate."""

from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Body, Query, Request

from loraflow.platform import credits, registry
from loraflow.platform.config import PlatformConfig
from loraflow.server.deps import Admin, Auth, Db
from loraflow.server.problems import Problem

router = APIRouter()


def _cfg(request: Request) -> PlatformConfig:
    return request.app.state.platform


@router.post("/api/quote", tags=["credits"])
def quote(request: Request, user: Auth, spec: Annotated[str, Body(embed=True)]) -> dict[str, Any]:
    """What a job would cost in USD and points before it is submitted (estimate or budget cap, plus fee)."""
    from loraflow.spec import parse_spec

    raw = yaml.safe_load(spec)
    if not isinstance(raw, dict):
        raise Problem(422, "invalid spec", "the spec must be a mapping")
    raw.setdefault("dataset", {}).setdefault("path", ".")
    return credits.quote(parse_spec(raw, "spec"), _cfg(request)).to_dict()


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


@router.get("/api/models", tags=["models"])
def list_models(
    user: Auth, store: Db, q: str | None = None, base_model: str | None = None, mine: bool = False
) -> list[dict[str, Any]]:
    return registry.list_models(store, user.name, user.admin, q, base_model, mine)


@router.get("/api/models/trigger-map", tags=["models"])
def trigger_map(user: Auth, store: Db) -> dict[str, Any]:
    """For generators: `<lora:NAME:W>` resolves NAME (a trigger word or slug) here."""
    return registry.trigger_map(store)


@router.get("/api/models/{slug}", tags=["models"])
def get_model(slug: str, user: Auth, store: Db) -> dict[str, Any]:
    return registry.get_model(store, slug, user.name, user.admin)


@router.patch("/api/models/{slug}", tags=["models"])
def update_model(
    slug: str,
    user: Auth,
    store: Db,
    visibility: Annotated[str | None, Body(embed=True)] = None,
    name: Annotated[str | None, Body(embed=True)] = None,
    default_weight: Annotated[float | None, Body(embed=True)] = None,
) -> dict[str, Any]:
    try:
        return registry.update_model(
            store, slug, user.name, user.admin, visibility=visibility, name=name, default_weight=default_weight
        )
    except PermissionError as exc:
        raise Problem(403, "forbidden", str(exc)) from exc


@router.post("/api/models/{slug}/review", tags=["models"])
def review_model(
    slug: str,
    admin: Admin,
    store: Db,
    decision: Annotated[str, Body(embed=True)],
    reason: Annotated[str, Body(embed=True)] = "",
) -> dict[str, Any]:
    return registry.review(store, slug, decision, admin.name, reason)


@router.post("/api/models/{slug}/use", tags=["models"])
def use_model(slug: str, user: Auth, store: Db) -> dict[str, Any]:
    registry.count_use(store, slug)
    return registry.get_model(store, slug, user.name, user.admin)


@router.post("/api/admin/gc", tags=["service"])
def collect_garbage(
    admin: Admin,
    store: Db,
    dry_run: Annotated[bool, Query(description="Say what would be freed; remove nothing.")] = True,
    include_bundles: bool = False,
) -> dict[str, Any]:
    """Retention now, by the operator's policy (LORAFLOW_GC_*): per job what goes and how many bytes.
    A dry run unless asked otherwise; active jobs and jobs awaiting approval are never touched."""
    from dataclasses import replace

    from loraflow import paths
    from loraflow.errors import UserInputError
    from loraflow.platform.gc import GcPolicy, collect

    try:
        policy = replace(GcPolicy.from_env(), include_bundles=include_bundles)
    except UserInputError as exc:
        raise Problem(500, "bad retention settings", exc.render()) from exc
    plans = collect(store, policy, dry_run=dry_run)
    jobs = [p.to_dict(paths.job_dir(p.job_id) if p.job_id else paths.home() / "uploads") for p in plans]
    return {"dry_run": dry_run, "bytes": sum(p.bytes for p in plans), "plans": jobs}


@router.post("/api/admin/sweep", tags=["service"])
def sweep_now(request: Request, admin: Admin, store: Db) -> dict[str, Any]:
    """Run the platform's duties now: external checks, credit settlement, model registration."""
    from loraflow.running.duties import sweep

    return sweep(store, _cfg(request))
