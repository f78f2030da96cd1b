"""The REST API: auth and ownership, uploads good and bad, events paged and live, stop/resume, downloads."""

from __future__ import annotations

import io
import json
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from loraflow import paths
from loraflow.jobs.states import ACTIVE
from loraflow.jobs.store import Store
from loraflow.server.app import ServiceConfig, create_app
from loraflow.server.tokens import create_token
from tests.conftest import EXAMPLES

SPEC = {
    "name": "apijob",
    "dataset": {"trigger_word": "lfx"},
    "base_model": "tiny-flux",
    "training": {"steps": 20},
    "sampling": {"prompts": ["[trigger] on the moon"], "every_n_steps": 0},
    "checkpointing": {"every_n_steps": 10},
}


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "shared-models"))


class Api:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens

    def __call__(self, method: str, url: str, user: str | None = "alice", **kw):
        headers = kw.pop("headers", {})
        if user:
            headers["Authorization"] = f"Bearer {self.tokens[user]}"
        return self.client.request(method, url, headers=headers, **kw)


def make_api(config: ServiceConfig, sweep_every_s: float | None = 2.0) -> Iterator[Api]:
    """A client of the real app with tokens for alice, bob and an admin."""
    store = Store()
    tokens = {u: create_token(store, u) for u in ("alice", "bob")}
    tokens["admin"] = create_token(store, "root", admin=True)
    with TestClient(create_app(store, config, sweep_every_s=sweep_every_s)) as client:
        yield Api(client, tokens)


@pytest.fixture
def api() -> Iterator[Api]:
    yield from make_api(ServiceConfig(max_upload_mb=5, max_concurrent_jobs=3, blocked_base_models=["flux-dev"]))


def dataset_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted((EXAMPLES / "sample_dataset").iterdir()):
            zf.write(path, f"photos/{path.name}")
    return buf.getvalue()


def submit(api: Api, user: str = "alice", **changes: object):
    spec = {**SPEC, **changes}
    return api(
        "POST",
        "/api/jobs",
        user,
        data={"spec": yaml.safe_dump(spec)},
        files={"dataset": ("photos.zip", dataset_zip(), "application/zip")},
    )


def wait_done(api: Api, job_id: str, user: str = "alice", timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api("GET", f"/api/jobs/{job_id}", user).json()
        if job["state"] not in {s.value for s in ACTIVE}:
            return job
        time.sleep(0.3)
    raise AssertionError("job did not end")


def at_once(n: int, call: Callable[[], int]) -> list[int]:
    """Make n calls at the same moment from n threads; their results."""
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(call())) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def uploads_left() -> list[Path]:
    root = paths.home() / "uploads"
    return list(root.iterdir()) if root.exists() else []


def test_every_route_needs_a_token(api: Api) -> None:
    assert api("GET", "/api/health", None).json()["ok"] is True
    schema = api.client.get("/openapi.json").json()
    routes = [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops if p != "/api/health"]
    assert len(routes) >= 11
    for method, path in routes:
        url = path.replace("{job_id}", "abc").replace("{path}", "x")
        for headers in ({}, {"Authorization": "Bearer lft_wrong"}):
            r = api.client.request(method, url, headers=headers)
            assert r.status_code == 401, (method, url, r.status_code)
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["status"] == 401 and r.headers["www-authenticate"] == "Bearer"


def test_job_lifecycle_ownership_events_and_download(api: Api) -> None:
    created = submit(api)
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["owner"] == "alice" and job["name"] == "apijob"
    job_id = job["id"]
    # Another user can neither see nor touch it; an admin can see it.
    for method, url in [
        ("GET", ""),
        ("GET", "/events"),
        ("POST", "/stop"),
        ("POST", "/resume"),
        ("POST", "/cancel"),
        ("GET", "/bundle"),
        ("GET", "/files/spec.yaml"),
    ]:
        r = api(method, f"/api/jobs/{job_id}{url}", "bob")
        assert r.status_code == 403, (method, url, r.text)
    assert api("GET", "/api/jobs", "bob").json()["total"] == 0
    assert api("GET", f"/api/jobs/{job_id}", "admin").status_code == 200
    assert api("GET", "/api/jobs/nope").status_code == 404
    # Live events over SSE until the job ends, with no gaps.
    with api.client.stream(
        "GET", f"/api/jobs/{job_id}/events/stream", headers={"Authorization": f"Bearer {api.tokens['alice']}"}
    ) as stream:
        seqs, types = [], []
        for line in stream.iter_lines():
            if line.startswith("data: ") and line != "data: {}":
                event = json.loads(line[6:])
                seqs.append(event["seq"])
                types.append(event["type"])
            if line == "event: end":
                break
    assert seqs == list(range(1, len(seqs) + 1)) and "job.completed" in types and "progress" in types
    done = api("GET", f"/api/jobs/{job_id}").json()
    assert done["state"] == "completed" and done["step"] == 20
    # Paged events: consecutive pages join without gaps.
    first = api("GET", f"/api/jobs/{job_id}/events", params={"limit": 5}).json()
    second = api("GET", f"/api/jobs/{job_id}/events", params={"after": first["next_after"], "limit": 5}).json()
    assert [e["seq"] for e in first["events"] + second["events"]] == list(range(1, 11))
    only = api("GET", f"/api/jobs/{job_id}/events", params={"type": "checkpoint.saved"}).json()["events"]
    assert [e["data"]["step"] for e in only] == [10, 20]
    # The bundle, whole and by range.
    whole = api("GET", f"/api/jobs/{job_id}/bundle")
    assert whole.status_code == 200 and zipfile.is_zipfile(io.BytesIO(whole.content))
    part = api("GET", f"/api/jobs/{job_id}/bundle", headers={"Range": "bytes=0-99"})
    assert part.status_code == 206 and part.content == whole.content[:100]
    sample = api("GET", f"/api/jobs/{job_id}/files/samples/step-000020/00.png")
    assert sample.status_code == 200 and sample.content[:4] == b"\x89PNG"
    assert api("GET", f"/api/jobs/{job_id}/files/../../loraflow.db").status_code == 404
    listing = api("GET", "/api/jobs", params={"state": "completed"}).json()
    assert listing["total"] == 1 and listing["jobs"][0]["id"] == job_id
    assert api("GET", "/api/jobs", params={"state": "bogus"}).status_code == 422


def test_bad_uploads_are_refused_and_leave_nothing(api: Api) -> None:
    def post(**kw):
        return api("POST", "/api/jobs", **kw)

    r = post(data={"spec": "name: [unclosed"}, files={"dataset": ("d.zip", dataset_zip())})
    assert r.status_code == 422 and "YAML" in r.json()["detail"]
    r = post(data={"spec": yaml.safe_dump({**SPEC, "trainng": {}})}, files={"dataset": ("d.zip", dataset_zip())})
    assert r.status_code == 422 and any("trainng" in e for e in r.json()["errors"])
    r = post(data={"spec": yaml.safe_dump(SPEC)})
    assert r.status_code == 422 and "dataset" in r.json()["detail"]
    big = b"\0" * (6 << 20)
    r = post(data={"spec": yaml.safe_dump(SPEC)}, files={"dataset": ("d.zip", big)})
    assert r.status_code == 413
    r = post(data={"spec": yaml.safe_dump(SPEC)}, files={"dataset": ("d.zip", b"this is not a zip")})
    assert r.status_code in (400, 422), r.text
    not_images = [("files", ("a.png", b"not a png")), ("files", ("a.txt", b"caption"))]
    r = post(data={"spec": yaml.safe_dump(SPEC)}, files=not_images)
    assert r.status_code == 422 and r.json()["title"] == "dataset not fit to train" and r.json()["findings"]
    r = post(data={"spec": yaml.safe_dump(SPEC)}, files=[("files", (".hidden", b"x"))])
    assert r.status_code == 422
    r = submit(api, base_model="flux-dev")
    assert r.status_code == 422 and "blocked" in r.json()["detail"]
    api.client.app.state.config.max_images = 3  # the service's own limit, not the environment's
    r = submit(api)
    assert r.status_code == 422 and "8 images; at most 3" in r.json()["detail"], r.text
    assert uploads_left() == [] and Store().list_jobs() == []


def test_status_limits_and_concurrent_stop_resume(api: Api) -> None:
    status = api("GET", "/api/status").json()
    assert status["available"] and status["blocked_base_models"] == ["flux-dev"] and status["max_concurrent_jobs"] == 3
    job_id = submit(api, training={"steps": 400}).json()["id"]
    deadline = time.monotonic() + 120
    while api("GET", f"/api/jobs/{job_id}").json()["step"] < 5 and time.monotonic() < deadline:
        time.sleep(0.2)
    codes = at_once(3, lambda: api("POST", f"/api/jobs/{job_id}/stop").status_code)
    assert set(codes) <= {200, 409} and 200 in codes
    stopped = wait_done(api, job_id)
    assert stopped["state"] == "stopped" and 0 < stopped["step"] < 400
    codes = at_once(3, lambda: api("POST", f"/api/jobs/{job_id}/resume").status_code)
    assert set(codes) <= {200, 409} and 200 in codes
    done = wait_done(api, job_id, timeout=300)
    assert done["state"] == "completed" and done["step"] == 400
    events = api("GET", f"/api/jobs/{job_id}/events", params={"type": "resumed", "limit": 1000}).json()["events"]
    assert len(events) == 1 and events[0]["data"]["step"] >= stopped["step"] - 10
    launched = api("GET", f"/api/jobs/{job_id}/events", params={"type": "train.launched"}).json()["events"]
    assert len(launched) == 2  # one trainer per run: the concurrent resumes started one runner
    assert api("POST", f"/api/jobs/{job_id}/stop").status_code == 409


def test_upload_edit_captions_then_train_with_approval(api: Api) -> None:
    files = [("files", (p.name, p.read_bytes())) for p in sorted((EXAMPLES / "sample_dataset").iterdir())]
    created = api("POST", "/api/uploads", files=files)
    assert created.status_code == 201, created.text
    upload_id = created.json()["upload_id"]
    assert created.json()["report"]["usable_images"] == 8
    captions = api("GET", f"/api/uploads/{upload_id}/captions").json()
    assert len(captions) == 8 and captions["mascot_00.jpg"].startswith("[trigger]")
    assert api("GET", f"/api/uploads/{upload_id}/captions", "bob").status_code == 404  # not bob's upload
    bad = api("PUT", f"/api/uploads/{upload_id}/captions", json={"../etc/passwd": "x"})
    assert bad.status_code == 422
    edited = api("PUT", f"/api/uploads/{upload_id}/captions", json={"mascot_00.jpg": "[trigger] waving, edited"})
    assert edited.json()["mascot_00.jpg"] == "[trigger] waving, edited"
    spec = {**SPEC, "publish": {"approval_required": True}, "checkpointing": {"every_n_steps": 10, "keep_last": 5}}
    job = api("POST", f"/api/uploads/{upload_id}/jobs", json={"spec": spec})
    assert job.status_code == 201, job.text
    job_id = job.json()["id"]
    held = wait_done(api, job_id)
    assert held["state"] == "awaiting_approval"
    assert api("POST", f"/api/jobs/{job_id}/publish").status_code == 409
    assert api("POST", f"/api/jobs/{job_id}/approve", "bob", json={"checkpoint": 10}).status_code == 403
    assert api("POST", f"/api/jobs/{job_id}/approve", json={"checkpoint": 15}).status_code == 422
    approved = api("POST", f"/api/jobs/{job_id}/approve", json={"checkpoint": 10})
    assert approved.status_code == 200 and approved.json()["state"] == "completed"
    events = api("GET", f"/api/jobs/{job_id}/events", params={"type": "job.approved"}).json()["events"]
    assert events[0]["data"] == {"checkpoint": 10, "by": "alice", "chosen": "step 10, as asked"}
    assert api("POST", f"/api/jobs/{job_id}/publish").status_code == 422  # no targets in the spec
    prepared = (paths.job_dir(job_id) / "dataset").rglob("mascot_00.txt")
    assert any("waving, edited" in p.read_text() for p in prepared)


def test_no_auth_only_on_loopback(cli) -> None:
    refused = cli("serve", "--host", "0.0.0.0", "--no-auth")
    assert refused.code == 2 and "127.0.0.1" in refused.err


def test_estimate_route(api: Api) -> None:
    r = api("POST", "/api/estimate", json={"spec": yaml.safe_dump({**SPEC, "training": {"steps": 100}})})
    assert r.status_code == 200, r.text
    (row,) = r.json()["estimates"]
    assert row["gpu"] == "CPU" and row["steps_s"] > 0 and row["cost_usd"] == 0
    assert api("POST", "/api/estimate", json={"spec": "- not a mapping"}).status_code == 422
