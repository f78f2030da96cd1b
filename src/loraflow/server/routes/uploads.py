"""`/api/uploads`: a dataset uploaded to check it and edit its captions before a job is made from it.

(No `from __future__ import annotations`: FastAPI reads the route annotations at runtime.)
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, File, Request, UploadFile

from loraflow.server import uploads
from loraflow.server.deps import Auth, Db
from loraflow.server.problems import bounded

router = APIRouter(tags=["datasets"])


@router.post("/api/uploads", status_code=201)
async def create_upload(
    request: Request,
    user: Auth,
    files: Annotated[list[UploadFile], File(description="Images and .txt captions, or one .zip/.tar")],
    controls: Annotated[list[UploadFile] | None, File(description="An edit model's control images, named like "
                                                      "their targets (they go in the upload's control/)")] = None,
) -> dict[str, Any]:
    """Upload a dataset to check it and edit its captions before creating the job; an edit model's pairs
    as `controls` (a job from it gets `dataset.control: control`)."""
    from loraflow.dataset import DatasetRun
    from loraflow.server.wizard import upload_pairs

    quotas = request.app.state.quotas
    quotas.upload(user.name)
    limit = request.app.state.config.max_upload_mb << 20
    upload_id, dataset = await uploads.create(user.name, files, limit, quotas, controls or [])
    run = DatasetRun(str(dataset), pairs=upload_pairs(dataset))
    report = (await quotas.off_loop(user.name, run.check)).to_dict()
    report["source"] = f"upload {upload_id}"  # never the server's own path
    return {"upload_id": upload_id, "report": report}


@router.get("/api/uploads/{upload_id}/captions")
def read_captions(upload_id: str, user: Auth) -> dict[str, str]:
    return uploads.captions(uploads.folder(user.name, upload_id))


@router.put("/api/uploads/{upload_id}/captions")
def write_captions(upload_id: str, user: Auth, captions: Annotated[dict[str, str], Body()]) -> dict[str, str]:
    """Set captions by image name; images not named keep theirs. All names are checked before any write."""
    dataset = uploads.folder(user.name, upload_id)
    for name in captions:
        uploads.image(dataset, name)
    for name, text in captions.items():
        uploads.write_caption(dataset, name, text)
    return uploads.captions(dataset)


@router.post("/api/uploads/{upload_id}/jobs", status_code=201)
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
    with state.quotas.work(user.name):
        parsed = read_spec(bounded(spec, state.config.maxima.spec_nodes), state.config, "spec", str(folder))
        return submit(store, parsed, user.name, state.config, state.platform, force).to_dict()
