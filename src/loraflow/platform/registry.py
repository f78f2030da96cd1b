"""The model registry: one record per published model with its full lineage, visibility and review.

Generators resolve `<lora:slug:0.8>` through the trigger map, which lists only models that are
approved (or published) and not private.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import or_, select

from loraflow.errors import NotFound, UserInputError
from loraflow.jobs.platform_tables import ModelRow
from loraflow.jobs.store import Job, Store
from loraflow.layout import HIGH_NOISE, PAIR_FILE
from loraflow.platform.config import PlatformConfig

VISIBILITY = ("private", "unlisted", "public")
LISTED = ("approved", "published")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "lora"


def to_dict(row: ModelRow) -> dict[str, Any]:
    return {
        "slug": row.slug,
        "name": row.name,
        "owner": row.owner,
        "base_model": row.base_model,
        "trigger_words": row.trigger_words,
        "files": row.files,
        "trained_from": row.trained_from,
        "published_to": row.published_to,
        "visibility": row.visibility,
        "status": row.status,
        "nsfw": row.nsfw,
        "usage_count": row.usage_count,
        "default_weight": row.default_weight,
        "decisions": row.decisions,
        "job_id": row.job_id,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }


def register_job(store: Store, job: Job, cfg: PlatformConfig, checkpoint: int | None = None) -> dict[str, Any]:
    """Record a completed job's model; idempotent per job and checkpoint."""
    from loraflow import __version__
    from loraflow.files import file_meta

    spec = job.train_spec
    lora = Path(job.outputs.lora or "")
    if checkpoint is not None:
        lora = job.folder / "checkpoints" / f"step-{checkpoint:06d}" / "lora.safetensors"
    if not lora.is_file():
        raise UserInputError(f"job {job.id} has no LoRA file to register", fix="register a completed job")
    meta = file_meta(lora)
    # Wan 2.2 A14B: the high-noise expert's file is the pair's other half, listed with it
    high = lora.with_name(PAIR_FILE if checkpoint is not None else f"{spec.name}{HIGH_NOISE}.safetensors")
    pair = [{"name": f"{spec.name}{HIGH_NOISE}.safetensors", **_sums(high), "urls": [], "path": str(high),
             "expert": "high_noise"}] if high.is_file() else []
    published = [p for p in job.outputs.published if p.get("checkpoint_step") == checkpoint]
    urls = [u for p in published for u in (p.get("lora_url"), p.get("url")) if u]
    durations = [e.ts for e in store.events(job.id, types=["job.created"], limit=1)]
    duration = (job.updated_at - durations[0]).total_seconds() if durations else None
    trained_from = {
        "job_id": job.id,
        "dataset_hash": job.outputs.dataset_hash,
        "engine": spec.engine.name,
        "engine_version": __version__ if spec.engine.name == "builtin" else spec.engine.options.get("version"),
        "steps": checkpoint or job.step,
        "resolution": spec.training.resolution,
        "duration_s": round(duration, 1) if duration is not None else None,
        "final_loss": job.loss,
        "cost_usd": round(job.cost_usd, 6),
        "checkpoint": checkpoint,
    }
    status = "approved" if cfg.review == "auto" or job.owner in cfg.auto_approve_users else "in_review"
    from loraflow.platform.names import trigger_owner

    word = spec.dataset.trigger_word
    triggers = [word] if word and not trigger_owner(store, word, job.owner) else []  # taken since: not listed
    with store.session() as s, s.begin():
        existing = s.execute(select(ModelRow).where(ModelRow.job_id == job.id)).scalars().all()
        for row in existing:
            if row.trained_from.get("checkpoint") == checkpoint:
                return to_dict(row)
        slug = _slug(spec.name)
        if s.get(ModelRow, slug) is not None:
            slug = f"{slug}-{job.id[:6]}"
        if checkpoint is not None:
            slug = f"{slug}-s{checkpoint}"
        row = ModelRow(
            slug=slug,
            name=spec.name,
            owner=job.owner,
            base_model=spec.base_model,
            trigger_words=triggers,
            files=[
                {"name": lora.name, "sha256": meta["sha256"], "size": meta["size"], "urls": urls, "path": str(lora)},
                *pair,
            ],
            trained_from=trained_from,
            published_to=[{k: v for k, v in p.items() if k != "checkpoint_step"} for p in published],
            visibility=cfg.default_visibility,
            status=status,
            nsfw=bool(getattr(spec, "nsfw", False)),
            decisions=[{"decision": status, "by": "policy", "at": _now()}] if status == "approved" else [],
            job_id=job.id,
        )
        s.add(row)
    store.append_event(job.id, "model.registered", {"slug": slug, "status": status})
    return get_model(store, slug, None)


def record_published(store: Store, job_id: str, results: list[dict[str, Any]]) -> int:
    """Add where a job's LoRA went since it was registered (a later `publish --to comfydeploy`) to its
    model's published_to; returns the number of records updated (0 when the job has no model yet: its
    registration reads the job's published list then)."""
    updated = 0
    with store.session() as s, s.begin():
        for row in s.execute(select(ModelRow).where(ModelRow.job_id == job_id)).scalars():
            entries = list(row.published_to or [])
            for result in results:
                if result.get("checkpoint_step") != row.trained_from.get("checkpoint"):
                    continue
                entry = {k: v for k, v in result.items() if k != "checkpoint_step"}
                if entry not in entries:
                    entries.append(entry)
            if entries != list(row.published_to or []):
                row.published_to = entries
                updated += 1
    return updated


def _sums(path: Path) -> dict[str, Any]:
    from loraflow.files import file_meta

    meta = file_meta(path)
    return {"sha256": meta["sha256"], "size": meta["size"]}


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _visible(row: ModelRow, user: str | None, admin: bool = False) -> bool:
    return admin or row.owner == user or row.visibility != "private"


def get_model(store: Store, slug: str, user: str | None, admin: bool = True) -> dict[str, Any]:
    with store.reader() as s:
        row = s.get(ModelRow, slug)
        if row is None or not _visible(row, user, admin):
            raise NotFound(f"no model {slug}")
        return to_dict(row)


def list_models(
    store: Store,
    user: str,
    admin: bool = False,
    q: str | None = None,
    base_model: str | None = None,
    mine: bool = False,
) -> list[dict[str, Any]]:
    query = select(ModelRow).order_by(ModelRow.created_at.desc())
    if mine:
        query = query.where(ModelRow.owner == user)
    elif not admin:  # others' models only when public and approved; unlisted ones are reached by slug
        query = query.where(
            or_(ModelRow.owner == user, (ModelRow.visibility == "public") & ModelRow.status.in_(LISTED))
        )
    if base_model:
        query = query.where(ModelRow.base_model == base_model)
    with store.reader() as s:
        rows = [to_dict(r) for r in s.execute(query).scalars()]
    if q:
        needle = q.lower()
        rows = [
            r
            for r in rows
            if needle in r["name"].lower()
            or needle in r["slug"]
            or any(needle in t.lower() for t in r["trigger_words"])
        ]
    return rows


def update_model(store: Store, slug: str, user: str, admin: bool, **changes: Any) -> dict[str, Any]:
    with store.session() as s, s.begin():
        row = s.get(ModelRow, slug)
        if row is None or not _visible(row, user, admin):
            raise NotFound(f"no model {slug}")
        if row.owner != user and not admin:
            raise PermissionError(f"model {slug} belongs to another user")
        if "visibility" in changes and changes["visibility"] is not None:
            if changes["visibility"] not in VISIBILITY:
                raise UserInputError(f"visibility must be one of {', '.join(VISIBILITY)}")
            row.visibility = changes["visibility"]
        if changes.get("name"):
            row.name = str(changes["name"])[:128]
        if changes.get("default_weight") is not None:
            row.default_weight = float(changes["default_weight"])
    return get_model(store, slug, user, admin)


def review(store: Store, slug: str, decision: str, by: str, reason: str = "") -> dict[str, Any]:
    if decision not in ("approve", "reject"):
        raise UserInputError("decision must be approve or reject")
    with store.session() as s, s.begin():
        row = s.get(ModelRow, slug)
        if row is None:
            raise NotFound(f"no model {slug}")
        row.status = "approved" if decision == "approve" else "rejected"
        row.decisions = [*row.decisions, {"decision": row.status, "by": by, "at": _now(), "reason": reason}]
    return get_model(store, slug, None)


def count_use(store: Store, slug: str) -> None:
    with store.session() as s, s.begin():
        row = s.get(ModelRow, slug)
        if row is None or row.status not in LISTED or row.visibility == "private":
            raise NotFound(f"no model {slug}")
        row.usage_count += 1


def trigger_map(store: Store) -> dict[str, dict[str, Any]]:
    """`{trigger or slug: {slug, url, weight}}` for approved, non-private models (newest wins a trigger)."""
    with store.reader() as s:
        rows = (
            s.execute(
                select(ModelRow)
                .where(ModelRow.status.in_(LISTED), ModelRow.visibility != "private")
                .order_by(ModelRow.created_at)
            )
            .scalars()
            .all()
        )
    out: dict[str, dict[str, Any]] = {}
    slugs: dict[str, dict[str, Any]] = {}
    for row in rows:
        file = row.files[0] if row.files else {}
        entry = {
            "slug": row.slug,
            "url": (file.get("urls") or [None])[0],
            "sha256": file.get("sha256"),
            "weight": row.default_weight,
            "base_model": row.base_model,
        }
        for trigger in row.trigger_words:
            out[trigger] = entry
        slugs[row.slug] = entry
    return out | slugs  # a slug always names its own model, whatever trigger words say
