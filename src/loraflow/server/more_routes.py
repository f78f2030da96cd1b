"""API routes beyond the job basics: uploads with caption editing, approval, publishing, money."""

from typing import Annotated, Any

import yaml
from fastapi import APIRouter, Body, File, Query, Request, UploadFile

from loraflow import paths
from loraflow.jobs.states import JobState
from loraflow.server.deps import Auth, Db, own_job
from loraflow.server.problems import Problem

router = APIRouter()
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def _upload_folder(user: str, upload_id: str):
    import re

    if not re.fullmatch(r"[0-9a-f]{32}", upload_id):
        raise Problem(404, "not found", "no such upload")
    folder = paths.home() / "uploads" / f"web-{user}-{upload_id}" / "dataset"
    if not folder.is_dir():
        raise Problem(404, "not found", "no such upload")
    return folder


@router.post("/api/uploads", status_code=201, tags=["datasets"])
async def create_upload(
    user: Auth,
    files: Annotated[list[UploadFile], File(description="Images and .txt captions, or one .zip/.tar")],
) -> dict[str, Any]:
    """Upload a dataset to check it and edit its captions before creating the job."""
    import shutil
    import uuid

    from loraflow.dataset import DatasetRun
    from loraflow.server.app import _save_uploads
    from loraflow.server.ui import _unpack

    upload_id = uuid.uuid4().hex
    root = paths.home() / "uploads" / f"web-{user.name}-{upload_id}"
    try:
        saved = await _save_uploads(files, root / "incoming", 2048 << 20)
        _unpack(saved, root / "dataset")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(root / "incoming", ignore_errors=True)
    report = DatasetRun(str(root / "dataset")).check()
    return {"upload_id": upload_id, "report": report.to_dict()}


@router.get("/api/uploads/{upload_id}/captions", tags=["datasets"])
def read_captions(upload_id: str, user: Auth) -> dict[str, str]:
    folder = _upload_folder(user.name, upload_id)
    return {
        p.name: (p.with_suffix(".txt").read_text(encoding="utf-8").strip() if p.with_suffix(".txt").exists() else "")
        for p in sorted(folder.iterdir())
        if p.suffix.lower() in IMAGE_SUFFIXES
    }


@router.put("/api/uploads/{upload_id}/captions", tags=["datasets"])
def write_captions(upload_id: str, user: Auth, captions: Annotated[dict[str, str], Body()]) -> dict[str, str]:
    """Set captions by image name; images not named keep theirs."""
    folder = _upload_folder(user.name, upload_id)
    for name in captions:
        image = folder / name
        if "/" in name or not image.is_file() or image.suffix.lower() not in IMAGE_SUFFIXES:
            raise Problem(422, "unknown image", f"{name!r} is not an image of this upload")
    for name, text in captions.items():
        (folder / name).with_suffix(".txt").write_text(text.strip() + "\n", encoding="utf-8")
    return read_captions(upload_id, user)


@router.post("/api/uploads/{upload_id}/jobs", status_code=201, tags=["datasets"])
def job_from_upload(
    request: Request,
    upload_id: str,
    user: Auth,
    store: Db,
    spec: Annotated[dict[str, Any], Body(embed=True)],
    force: bool = False,
) -> dict[str, Any]:
    """Create a job from an upload (after caption edits) and a spec given as JSON."""
    from loraflow.server.app import _check_limits, _submit
    from loraflow.spec import parse_spec

    folder = _upload_folder(user.name, upload_id)
    raw = dict(spec)
    raw["dataset"] = {**(raw.get("dataset") or {}), "path": str(folder)}
    parsed = parse_spec(raw, "spec")
    _check_limits(parsed, request.app.state.config)
    return _submit(store, parsed, user, force, request.app.state.platform).to_dict()


@router.post("/api/jobs/{job_id}/approve", tags=["jobs"])
def approve_job(
    job_id: str, user: Auth, store: Db, checkpoint: Annotated[int | None, Body(embed=True)] = None
) -> dict[str, Any]:
    """Release a job held in awaiting_approval, publishing the final LoRA or the chosen checkpoint."""
    from loraflow.errors import UserInputError
    from loraflow.publish.publisher import approve_job

    job = own_job(store, user, job_id)
    if job.state is not JobState.AWAITING_APPROVAL:
        raise Problem(409, "conflict", f"job {job_id} is {job.state.value}, not awaiting_approval")
    try:
        approve_job(store, job_id, checkpoint, user.name)
    except UserInputError as exc:
        raise Problem(422, "cannot approve", exc.message) from exc
    except Exception as exc:
        raise Problem(502, "publishing failed", str(exc)) from exc
    return store.get(job_id).to_dict()


@router.post("/api/jobs/{job_id}/publish", tags=["jobs"])
def publish(
    job_id: str, user: Auth, store: Db, checkpoint: Annotated[int | None, Body(embed=True)] = None
) -> dict[str, Any]:
    """Publish a completed job (again) to its spec's targets, optionally a kept checkpoint."""
    from loraflow.publish.publisher import publish_job

    job = own_job(store, user, job_id)
    if job.state is not JobState.COMPLETED:
        raise Problem(409, "conflict", f"job {job_id} is {job.state.value}; publish a completed job")
    if not job.train_spec.publish.targets:
        raise Problem(422, "no targets", "the job's spec has no publish.targets")
    results = publish_job(store, job, checkpoint)
    return {"published": [getattr(r, "__dict__", r) for r in results]}


@router.post("/api/estimate", tags=["money"])
def estimate(
    user: Auth, spec: Annotated[str, Body(embed=True, description="The spec as YAML or JSON")]
) -> dict[str, Any]:
    """Predicted time and cost per GPU type on offer (Vast.ai), or on this machine."""
    from loraflow.jobs.estimate import estimate as predict
    from loraflow.spec import parse_spec

    raw = yaml.safe_load(spec)
    if not isinstance(raw, dict):
        raise Problem(422, "invalid spec", "the spec must be a mapping")
    raw.setdefault("dataset", {}).setdefault("path", ".")
    parsed = parse_spec(raw, "spec")
    if parsed.compute.provider == "vastai":
        from loraflow.providers.vastai import VastProvider

        best: dict[str, Any] = {}
        for ranked in VastProvider().offers(parsed):
            best.setdefault(str(ranked.offer.get("gpu_name")), ranked.estimate.to_dict())
        return {"budget_usd": parsed.budget.max_usd, "estimates": list(best.values())}
    gpu = "CPU" if parsed.base_model == "tiny-flux" else "RTX 4090"
    return {"budget_usd": parsed.budget.max_usd, "estimates": [predict(parsed, gpu, 0.0, remote=False).to_dict()]}


@router.get("/api/offers", tags=["money"])
def offers(user: Auth, base_model: str = "flux-dev", limit: Annotated[int, Query(ge=1, le=100)] = 20) -> list[Any]:
    """Vast.ai offers that fit a default job on this base model, cheapest job first."""
    from loraflow.providers.vastai import VastProvider
    from loraflow.spec import parse_spec

    spec = parse_spec(
        {"name": "offers", "dataset": {"path": "."}, "base_model": base_model, "compute": {"provider": "vastai"}},
        "offers",
    )
    return [{"offer": r.offer, "estimate": r.estimate.to_dict()} for r in VastProvider().offers(spec)[:limit]]
