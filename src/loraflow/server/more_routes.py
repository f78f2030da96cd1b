"""API routes beyond the job basics: uploads with caption editing, approval, publishing, money."""

from typing import Annotated, Any, Literal

import yaml
from fastapi import APIRouter, Body, File, Query, Request, UploadFile

from loraflow.jobs.states import JobState
from loraflow.server import uploads
from loraflow.server.deps import Auth, Db, own_job
from loraflow.server.problems import Problem

router = APIRouter()


@router.post("/api/uploads", status_code=201, tags=["datasets"])
async def create_upload(
    request: Request,
    user: Auth,
    files: Annotated[list[UploadFile], File(description="Images and .txt captions, or one .zip/.tar")],
) -> dict[str, Any]:
    """Upload a dataset to check it and edit its captions before creating the job."""
    from loraflow.dataset import DatasetRun

    upload_id, dataset = await uploads.create(user.name, files, request.app.state.config.max_upload_mb << 20)
    report = DatasetRun(str(dataset)).check().to_dict()
    report["source"] = f"upload {upload_id}"  # never the server's own path
    return {"upload_id": upload_id, "report": report}


@router.get("/api/uploads/{upload_id}/captions", tags=["datasets"])
def read_captions(upload_id: str, user: Auth) -> dict[str, str]:
    return uploads.captions(uploads.folder(user.name, upload_id))


@router.put("/api/uploads/{upload_id}/captions", tags=["datasets"])
def write_captions(upload_id: str, user: Auth, captions: Annotated[dict[str, str], Body()]) -> dict[str, str]:
    """Set captions by image name; images not named keep theirs. All names are checked before any write."""
    dataset = uploads.folder(user.name, upload_id)
    for name in captions:
        uploads.image(dataset, name)
    for name, text in captions.items():
        uploads.write_caption(dataset, name, text)
    return uploads.captions(dataset)


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
    from loraflow.running.submit import read_spec, submit

    state = request.app.state
    folder = uploads.folder(user.name, upload_id)
    parsed = read_spec(spec, state.config, "spec", dataset_path=str(folder))
    return submit(store, parsed, user.name, state.config, state.platform, force).to_dict()


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
    request: Request,
    job_id: str,
    user: Auth,
    store: Db,
    checkpoint: Annotated[int | None, Body(embed=True)] = None,
    to: Annotated[
        Literal["huggingface", "s3", "comfydeploy"] | None,
        Body(embed=True, description="Only this target type; comfydeploy registers the published LoRA with the "
             "operator's ComfyDeploy workspace"),
    ] = None,
) -> dict[str, Any]:
    """Publish a completed job (again) to its spec's targets, optionally a kept checkpoint."""
    from loraflow.platform.registry import record_published
    from loraflow.publish.publisher import publish_job

    job = own_job(store, user, job_id)
    if job.state is not JobState.COMPLETED:
        raise Problem(409, "conflict", f"job {job_id} is {job.state.value}; publish a completed job")
    if not job.train_spec.publish.targets:
        raise Problem(422, "no targets", "the job's spec has no publish.targets")
    if to == "comfydeploy" and not request.app.state.config.grants.comfydeploy:
        raise Problem(403, "not granted", "this service does not push LoRAs to ComfyDeploy (its operator's "
                      "workspace); the operator grants it with LORAFLOW_SERVICE_COMFYDEPLOY=1")
    results = publish_job(store, job, checkpoint, only=to)
    record_published(store, job.id, results)
    return {"published": [getattr(r, "__dict__", r) for r in results]}


@router.post("/api/estimate", tags=["money"])
def estimate(
    request: Request, user: Auth, spec: Annotated[str, Body(embed=True, description="The spec as YAML or JSON")]
) -> dict[str, Any]:
    """Predicted time and cost per GPU type on offer (Vast.ai), or on this machine."""
    from loraflow.providers.estimate import estimate as predict
    from loraflow.running.submit import read_spec

    try:
        raw = yaml.safe_load(spec)
    except yaml.YAMLError as exc:
        raise Problem(422, "invalid spec", f"the spec is not valid YAML/JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise Problem(422, "invalid spec", "the spec must be a mapping")
    parsed = read_spec(raw, request.app.state.config, "spec", dataset_path=".")  # the server's paths are not asked
    if parsed.engine.name == "fal":  # priced per run by fal, not by the hour
        from loraflow.engines.fal import quote

        return {"budget_usd": parsed.budget.max_usd, "estimates": [quote(parsed)]}
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
