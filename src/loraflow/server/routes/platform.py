"""The service itself and the platform around the jobs: health and limits, the webhook secret, the model
registry and its review gate, retention and the periodic duties run on demand.

(No `from __future__ import annotations`: FastAPI reads the route annotations at runtime.)
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request

from loraflow import __version__
from loraflow.jobs.states import ACTIVE
from loraflow.platform import registry
from loraflow.server.deps import Admin, Auth, Db
from loraflow.server.problems import Problem

router = APIRouter()


@router.get("/api/health", tags=["service"])
def health() -> dict[str, Any]:
    return {"ok": True, "version": __version__}


@router.get("/api/status", tags=["service"])
def status(request: Request, user: Auth, store: Db) -> dict[str, Any]:
    cfg = request.app.state.config
    running = store.count_jobs(owner=user.name, states=[s.value for s in ACTIVE])
    return {
        "available": cfg.available,
        "message": cfg.message,
        "blocked_base_models": cfg.blocked_base_models,
        "max_images": cfg.max_images,
        "max_upload_mb": cfg.max_upload_mb,
        "max_concurrent_jobs": cfg.max_concurrent_jobs,
        "your_active_jobs": running,
    }


@router.get("/api/webhook-secret", tags=["service"])
def webhook_secret(user: Auth) -> dict[str, str]:
    """Your own webhook signing secret, to verify X-Loraflow-Signature on what your jobs send."""
    import os

    from loraflow.notify.signing import SECRET_ENV, user_secret

    shared = os.environ.get(SECRET_ENV)
    if not shared:
        raise Problem(404, "not found", "this service does not sign webhooks (its operator set no secret)")
    secret = shared if user.name == "local" else user_secret(shared, user.name)  # no-auth: one's own server
    return {"secret": secret, "header": "X-Loraflow-Signature"}


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

    return sweep(store, request.app.state.platform)
