"""Every door refuses what the API refuses: publishing, stopping and resuming go through one use case each
(running/publishing.py, running/control.py), so the web UI and the CLI cannot do what the API would not
(before, the UI published a job held for approval and the CLI published any job whatever its state)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.layout import JobLayout
from loraflow.server import ui
from loraflow.server.app import ServiceConfig, create_app
from loraflow.spec import parse_spec

TARGET = {"type": "s3", "bucket": "loras", "endpoint_url": "http://127.0.0.1:9"}  # nothing answers there
SPEC = {"name": "guarded", "dataset": {"path": "."}, "base_model": "tiny-flux", "publish": {"targets": [TARGET]}}


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(config=ServiceConfig(no_auth=True), sweep_every_s=None)
    ui.install(app)
    with TestClient(app, raise_server_exceptions=False) as c:
        token = re.search(r'"X-CSRF-Token": "([^"]+)"', c.get("/").text).group(1)
        c.headers["X-CSRF-Token"] = token  # as htmx sends it from the page (CSRF: server/web_security.py)
        yield c


def job_in(state: JobState) -> str:
    store = Store()
    job = store.create_job(parse_spec(SPEC, "spec"))
    store.update(job.id, state=state.value)
    return job.id


def test_the_web_ui_does_not_publish_a_job_held_for_approval(client: TestClient) -> None:
    job_id = job_in(JobState.AWAITING_APPROVAL)
    api = client.post(f"/api/jobs/{job_id}/publish")
    assert api.status_code == 409
    assert api.json()["detail"] == f"job {job_id} is awaiting_approval; publish a completed job"
    page = client.post(f"/ui/jobs/{job_id}/publish", headers={"hx-request": "true"})
    assert page.status_code == 409 and page.json()["detail"] == api.json()["detail"]  # the banner says why
    job = Store().get(job_id)
    assert job.state is JobState.AWAITING_APPROVAL and not job.outputs.published


def test_the_cli_does_not_publish_a_job_held_for_approval(cli) -> None:
    job_id = job_in(JobState.AWAITING_APPROVAL)
    result = cli("publish", job_id)
    assert result.code == 2 and f"job {job_id} is awaiting_approval; publish a completed job" in result.out + result.err
    assert not Store().get(job_id).outputs.published


def test_a_job_without_targets_or_with_another_target_type_is_refused_alike(client: TestClient, cli) -> None:
    store = Store()
    bare = store.create_job(parse_spec({**SPEC, "publish": {}}, "spec")).id
    store.update(bare, state=JobState.COMPLETED.value)
    assert client.post(f"/api/jobs/{bare}/publish").status_code == 422
    assert client.post(f"/ui/jobs/{bare}/publish", headers={"hx-request": "true"}).status_code == 422
    result = cli("publish", bare)
    assert result.code == 2 and "publish.targets" in result.out + result.err
    s3_only = job_in(JobState.COMPLETED)
    answer = client.post(f"/api/jobs/{s3_only}/publish", json={"to": "huggingface"})
    assert answer.status_code == 422 and answer.json()["detail"].startswith(f"job {s3_only} has no huggingface target")
    assert cli("publish", s3_only, "--to", "huggingface").code == 2


def test_a_finished_job_is_stopped_or_resumed_by_no_door(client: TestClient, cli) -> None:
    job_id = job_in(JobState.COMPLETED)
    api = client.post(f"/api/jobs/{job_id}/stop")
    assert api.status_code == 409
    page = client.post(f"/ui/jobs/{job_id}/stop", headers={"hx-request": "true"})
    assert page.status_code == 409 and page.json()["detail"] == api.json()["detail"]
    result = cli("jobs", "stop", job_id)
    assert result.code == 2 and "nothing to stop" in result.err
    assert not Path(JobLayout(str(Store().get(job_id).folder)).stop_request).exists()  # nothing was asked to stop
    assert client.post(f"/api/jobs/{job_id}/resume").status_code == 409
    assert client.post(f"/ui/jobs/{job_id}/resume", headers={"hx-request": "true"}).status_code == 409
    assert Store().get(job_id).state is JobState.COMPLETED


def test_approving_a_job_not_held_is_refused_alike(client: TestClient, cli) -> None:
    job_id = job_in(JobState.COMPLETED)
    api = client.post(f"/api/jobs/{job_id}/approve")
    assert api.status_code == 409 and api.json()["detail"] == f"job {job_id} is completed, not awaiting_approval"
    result = cli("jobs", "approve", job_id)
    assert result.code == 2 and api.json()["detail"] in result.out + result.err
    assert Store().get(job_id).state is JobState.COMPLETED
