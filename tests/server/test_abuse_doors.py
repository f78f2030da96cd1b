"""One door for every state change, names owned by their users, operator values kept from users
(issue 29), through the real app."""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient

from loraflow.jobs.platform_tables import ModelRow
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.platform import registry
from loraflow.platform.config import PlatformConfig
from loraflow.server import ui
from loraflow.server.app import ServiceConfig, create_app
from loraflow.server.tokens import create_token
from loraflow.spec import parse_spec
from tests.server.test_api import dataset_zip

SPEC = {"name": "door", "dataset": {"trigger_word": "lfx"}, "base_model": "tiny-flux", "training": {"steps": 30}}


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "shared-models"))


class Api:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client, self.tokens = client, tokens

    def __call__(self, method: str, url: str, user: str = "alice", **kw):
        return self.client.request(method, url, headers={"Authorization": f"Bearer {self.tokens[user]}"}, **kw)


def make(config: ServiceConfig, platform: PlatformConfig | None = None) -> tuple[TestClient, Api, Store]:
    store = Store()
    tokens = {u: create_token(store, u) for u in ("alice", "bob")}
    app = create_app(store, config, platform or PlatformConfig(), sweep_every_s=None)
    ui.install(app)
    client = TestClient(app, raise_server_exceptions=False)
    return client, Api(client, tokens), store


def stopped_job(store: Store, owner: str = "alice") -> str:
    job = store.create_job(parse_spec({**SPEC, "dataset": {"path": ".", "trigger_word": "lfx"}}, "s"), owner=owner)
    store.update(job.id, state=JobState.STOPPED.value)
    return job.id


def submit(api: Api, user: str = "alice", **changes: object):
    spec = json.dumps({**SPEC, **changes})
    return api("POST", "/api/jobs", user, data={"spec": spec}, files={"dataset": ("d.zip", dataset_zip())})


def test_resume_is_refused_where_a_submission_would_be() -> None:
    """Before: with the service paused a new job got 503 but a resume got 200 and trained; with a limit of
    one job a resume made two."""
    client, api, store = make(ServiceConfig(available=False, message="maintenance"))
    with client:
        job_id = stopped_job(store)
        answer = api("POST", f"/api/jobs/{job_id}/resume")
        assert answer.status_code == 503 and "maintenance" in answer.json()["detail"]
        page = client.get("/login")
        client.post("/login", data={"token": api.tokens["alice"], "csrf": _csrf(page.text)})
        token = page_token(client.get("/").text)
        ui_answer = client.post(f"/ui/jobs/{job_id}/resume", headers={"X-CSRF-Token": token, "hx-request": "true"})
        assert ui_answer.status_code == 503
        assert store.get(job_id).state is JobState.STOPPED  # nothing changed

    client, api, store = make(ServiceConfig(max_concurrent_jobs=1))
    with client:
        busy = store.create_job(parse_spec({**SPEC, "dataset": {"path": "."}}, "s"), owner="alice")
        store.update(busy.id, state=JobState.TRAINING.value)
        job_id = stopped_job(store)
        answer = api("POST", f"/api/jobs/{job_id}/resume")
        assert answer.status_code == 429 and store.get(job_id).state is JobState.STOPPED

    client, api, store = make(ServiceConfig(), PlatformConfig(credits=True, local_usd_per_hour=36.0))
    with client:
        job_id = stopped_job(store)
        answer = api("POST", f"/api/jobs/{job_id}/resume")
        assert answer.status_code == 402 and store.get(job_id).state is JobState.STOPPED


def test_a_name_belongs_to_the_user_who_took_it() -> None:
    """Before: a trigger equal to another user's slug took that slug over in the trigger map, and two users
    publishing to one granted namespace overwrote each other's repo."""
    from loraflow.running.trust import Grants

    client, api, store = make(ServiceConfig(grants=Grants(hf_namespaces=frozenset({"team"}))))
    with store.session() as s, s.begin():
        for slug, owner, triggers in (("mascot", "bob", ["bobword"]), ("alices", "alice", ["mascot"])):
            s.add(ModelRow(slug=slug, name=slug, owner=owner, base_model="tiny-flux", trigger_words=triggers,
                           files=[], status="approved", visibility="public", job_id=slug))  # fmt: skip
    assert registry.trigger_map(store)["mascot"]["slug"] == "mascot"  # a slug always names its own model
    hub = {"targets": [{"type": "huggingface", "repo_id": "team/shared"}]}
    with client:
        for word in ("mascot", "BobWord"):
            answer = submit(api, dataset={"trigger_word": word})
            assert answer.status_code == 422, answer.text
            assert any(e.startswith("dataset.trigger_word") for e in answer.json()["errors"])
        bobs = submit(api, "bob", name="bobs", dataset={"trigger_word": "bobnew"}, publish=hub)
        assert bobs.status_code == 201, bobs.text
        answer = submit(api, dataset={"trigger_word": "alicenew"}, publish=hub)
        assert answer.status_code == 422 and "team/shared" in answer.json()["detail"]
        assert store.count_jobs(owner="alice") == 0  # refusals create nothing


def test_the_operator_check_url_never_reaches_a_user() -> None:
    """Before: `check.requested` showed LORAFLOW_PRECHECK_URL with its ?key=."""
    platform = PlatformConfig(precheck_url="http://127.0.0.1:9/check?key=operator-secret-key")
    client, api, _store = make(ServiceConfig(), platform)
    with client:
        job = submit(api)
        assert job.status_code == 201, job.text
        events = api("GET", f"/api/jobs/{job.json()['id']}/events").text
        assert "check.requested" in events and "operator-secret-key" not in events and "127.0.0.1:9" not in events


def test_a_worker_never_claims_a_job_before_its_external_check_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the door recorded the job, then its flags (trust, queued, the external check) in three more
    transactions; a worker's claim in between took a job that waits for the operator's check and started it
    unchecked. Now the job and its flags are one transaction (and one commit instead of four)."""
    from loraflow.running.submit import read_spec
    from loraflow.running.submit import submit as door
    from loraflow.running.worker import Worker
    from tests.conftest import EXAMPLES

    store = Store()
    worker, claimed = Worker(store, slots=4, capacity=4), []
    recorded = store.create_job

    def recorded_then_claimed(*args, **kwargs):
        job = recorded(*args, **kwargs)
        claimed.extend(worker.claim(4))  # a worker's claim at once after the job's own commit
        return job

    monkeypatch.setattr(store, "create_job", recorded_then_claimed)
    config = ServiceConfig(queue_for_workers=True)
    raw = {"name": "checked", "base_model": "tiny-flux", "dataset": {"trigger_word": "lfx"}}
    spec = read_spec(raw, config, dataset_path=str(EXAMPLES / "sample_dataset"))
    job = door(store, spec, "alice", config, PlatformConfig(precheck_url="http://127.0.0.1:9/check"))
    assert claimed == []
    stored = store.get(job.id)
    assert stored.outputs.check == "pending" and stored.outputs.queued and stored.outputs.trust == "service"
    assert [e.type for e in store.events(job.id)] == ["job.created", "check.requested"]


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    return found.group(1) if found else ""


def page_token(html: str) -> str:
    """The CSRF token a page gives htmx (body hx-headers)."""
    found = re.search(r'"X-CSRF-Token": "([^"]+)"', html)
    return found.group(1) if found else ""
