"""Bounded work per request and per user (issue 29), tried as the hostile review tried it: every case
through the real app, most with a TestClient, the event-loop ones with a real uvicorn on loopback."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from loraflow.jobs.store import Store
from loraflow.server.app import ServiceConfig, create_app
from loraflow.server.tokens import create_token
from loraflow.testing.live_server import live_server

BASE = "name: bomb\nbase_model: tiny-flux\ndataset: {trigger_word: lfx}\n"


def alias_bomb(levels: int = 7) -> str:
    """The review's ~450-byte spec: each level a list of nine aliases of the one before, the last one
    given as the sample prompts (9**7 strings for validation to walk: 22 s of CPU on /api/quote)."""
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\n{BASE}sampling: {{prompts: *l{levels - 1}}}\n"


class Api:
    def __init__(self, client: TestClient, tokens: dict[str, str]) -> None:
        self.client, self.tokens = client, tokens

    def __call__(self, method: str, url: str, user: str = "mallory", **kw):
        headers = {"Authorization": f"Bearer {self.tokens[user]}", **kw.pop("headers", {})}
        return self.client.request(method, url, headers=headers, **kw)


def make_api() -> tuple[Store, dict[str, str], object]:
    """The app as `loraflow serve` makes it, its settings from the environment."""
    store = Store()
    tokens = {u: create_token(store, u) for u in ("mallory", "alice")}
    config = ServiceConfig.from_env()
    config.max_upload_mb = 5
    return store, tokens, create_app(store, config, sweep_every_s=None)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setenv("LORAFLOW_MAX_UPLOADS_PER_MINUTE", "2")
    monkeypatch.setenv("LORAFLOW_MAX_STREAMS_PER_USER", "2")
    _store, tokens, app = make_api()
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client, tokens)


def test_an_alias_bomb_is_refused_at_once_in_every_door(api: Api) -> None:
    """Before: a 6-7 level bomb to /api/quote parsed for seconds (22 s of CPU at 7 levels)."""
    bomb = alias_bomb()
    assert len(bomb) < 600
    for url, kw in (("/api/quote", {"json": {"spec": bomb}}), ("/api/estimate", {"json": {"spec": bomb}}),
                    ("/api/jobs", {"data": {"spec": bomb}, "files": {"files": ("a.png", b"x")}})):  # fmt: skip
        started = time.process_time()
        answer = api("POST", url, **kw)
        assert answer.status_code == 413, (url, answer.text)
        assert "aliases" in answer.json()["detail"] and time.process_time() - started < 1.0


def test_a_big_or_deep_spec_is_refused_by_size_before_it_is_read(api: Api) -> None:
    big = BASE + "".join(f"k{i}: {'x' * 60}\n" for i in range(70_000))  # ~4.4 MB, as in the review
    answer = api("POST", "/api/quote", content=big, headers={"content-type": "application/json"})
    assert answer.status_code == 413  # over the body cap: refused before a byte of it is parsed
    over_spec_cap = BASE + "".join(f"k{i}: {'x' * 60}\n" for i in range(1_200))  # ~80 KB: in the body cap
    answer = api("POST", "/api/quote", json={"spec": over_spec_cap})
    assert answer.status_code == 413 and "bytes" in answer.json()["detail"]
    deep = BASE + "deep: " + "[" * 5000 + "]" * 5000 + "\n"
    answer = api("POST", "/api/quote", json={"spec": deep})
    assert answer.status_code == 413 and "nested" in answer.json()["detail"]


def test_bodies_are_capped_per_route_declared_or_streamed(api: Api) -> None:
    """Before: a 150 MB JSON caption answered 200 with 1.3 GB of server memory."""
    huge = b'{"a.png": "' + b"x" * (3 << 20) + b'"}'
    answer = api("PUT", "/api/uploads/" + "0" * 32 + "/captions", content=huge,
                 headers={"content-type": "application/json"})  # fmt: skip
    assert answer.status_code == 413 and answer.json()["title"] == "request too large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"a.png": "'
        for _ in range(40):
            yield b"x" * (64 << 10)
        yield b'"}'

    answer = api("PUT", "/api/uploads/" + "0" * 32 + "/captions", content=chunks(),
                 headers={"content-type": "application/json"})  # fmt: skip
    assert answer.status_code == 413


def test_deeply_nested_json_is_a_client_error(api: Api) -> None:
    """Before: a deeply nested spec answered 500 (a RecursionError), as text or as a JSON body."""
    deep_text = "[" * 3000 + "]" * 3000
    answer = api("POST", "/api/quote", json={"spec": deep_text})
    assert answer.status_code == 413 and "nested" in answer.json()["detail"]
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "grey").save(png, format="PNG")
    upload = api("POST", "/api/uploads", files={"files": ("a.png", png.getvalue())}).json()["upload_id"]
    nested: dict = {}
    inner = nested
    for _ in range(900):
        inner["a"] = {}
        inner = inner["a"]
    spec = {**_spec(), "engine": {"options": nested}}
    answer = api("POST", f"/api/uploads/{upload}/jobs", json={"spec": spec})
    assert answer.status_code == 413 and "nested" in answer.json()["detail"]
    body = "[" * 100_000 + "]" * 100_000
    answer = api("PUT", f"/api/uploads/{upload}/captions", content=body, headers={"content-type": "application/json"})
    assert 400 <= answer.status_code < 500


def test_uploads_and_event_streams_have_per_user_quotas(api: Api) -> None:
    """Before: 40 uploads a second and 300 streams from one user were all taken."""
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "grey").save(png, format="PNG")
    answers = [api("POST", "/api/uploads", files={"files": ("a.png", png.getvalue())}) for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [201, 201]
    assert answers[2].status_code == 429 and int(answers[2].headers["retry-after"]) >= 1
    assert api("POST", "/api/uploads", user="alice", files={"files": ("a.png", png.getvalue())}).status_code == 201

    store = api.client.app.state.store
    from loraflow.spec import parse_spec

    job = store.create_job(parse_spec({**_spec(), "dataset": {"path": "."}}, "s"), owner="mallory")
    store.update(job.id, state="training")
    url = f"/api/jobs/{job.id}/events/stream"
    with api.client.stream("GET", url, headers=_auth(api)) as one, api.client.stream("GET", url, headers=_auth(api)):
        assert one.status_code == 200
        assert api("GET", url).status_code == 429  # a third stream of the same user
    store.update(job.id, state="completed")  # the two above have closed: their slots came back
    with api.client.stream("GET", url, headers=_auth(api)) as again:
        assert again.status_code == 200


def test_every_costly_knob_has_a_service_maximum_named_with_its_limit(api: Api) -> None:
    spec = {
        **_spec(),
        "training": {"resolution": [16384], "batch_size": 100000, "steps": 10**6},
        "sampling": {"width": 65536, "height": 65536},
        "checkpointing": {"keep_last": 10**6},
        "compute": {"provider": "vastai", "max_retries": 10000, "heartbeat_minutes": 1e9, "gpus": 8,
                    "gpu": {"disk_gb": 100_000}},
        "notifications": [{"type": "webhook", "url": f"https://example.com/{i}"} for i in range(50)],
    }  # fmt: skip
    answer = api("POST", "/api/quote", json={"spec": json.dumps(spec)})
    assert answer.status_code == 422
    errors = "\n".join(answer.json()["errors"])
    limits = (("training.resolution", "2048"), ("training.batch_size", "16"), ("training.steps", "20000"),
              ("sampling.width/height", "2048"), ("checkpointing.keep_last", "20"), ("compute.max_retries", "5"),
              ("compute.heartbeat_minutes", "60"), ("compute.gpus", "4"), ("compute.gpu.disk_gb", "500"),
              ("notifications", "10"))  # fmt: skip
    for field, limit in limits:
        assert any(line.startswith(field) and f"limit {limit}" in line for line in answer.json()["errors"]), (
            field, errors)


def test_the_operator_sets_the_maxima(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("LORAFLOW_MAX_HEARTBEAT_MINUTES", "5")
    _store, tokens, app = make_api()
    with TestClient(app) as client:
        api = Api(client, tokens)
        ok = {**_spec(), "training": {"batch_size": 32}}
        answer = api("POST", "/api/quote", json={"spec": json.dumps(ok)})
        assert answer.status_code == 200, answer.text
        low = {**_spec(), "compute": {"heartbeat_minutes": 6}}
        answer = api("POST", "/api/quote", json={"spec": json.dumps(low)})
        assert answer.status_code == 422 and "limit 5 (LORAFLOW_MAX_HEARTBEAT_MINUTES)" in answer.json()["detail"]


def test_checks_of_big_images_leave_the_event_loop_free(tmp_path) -> None:
    """Before: six grey 8000x8000 PNGs (447 KB in all) froze every request for 4-17 s."""
    pngs = []
    for i in range(3):
        buf = io.BytesIO()
        Image.new("L", (8000, 8000), 128).save(buf, format="PNG")
        pngs.append((f"grey{i}.png", buf.getvalue()))
    assert sum(len(b) for _, b in pngs) < 1 << 20
    _store, tokens, app = make_api()
    with live_server(app) as url:
        done = threading.Event()
        waits: list[float] = []

        def poll() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not done.is_set():
                    started = time.monotonic()
                    assert client.get("/api/health").status_code == 200
                    waits.append(time.monotonic() - started)

        poller = threading.Thread(target=poll)
        poller.start()
        started = time.monotonic()
        files = [("files", p) for p in pngs]
        answer = httpx.post(f"{url}/api/uploads", files=files, timeout=120,
                            headers={"Authorization": f"Bearer {tokens['mallory']}"})  # fmt: skip
        took = time.monotonic() - started
        done.set()
        poller.join()
    assert answer.status_code == 201, answer.text
    assert took > 1.0  # the check was real work
    assert len(waits) > 5 and max(waits) < 0.5 * took, (max(waits), took)


def _spec() -> dict:
    return {"name": "knobs", "base_model": "tiny-flux", "dataset": {"trigger_word": "lfx"}}


def _auth(api: Api) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.tokens['mallory']}"}


def test_requests_in_flight_per_credential_are_bounded_before_any_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: 300 requests at once with one token each took a worker thread and a store connection for
    their lookups, and every other user waited behind them."""
    monkeypatch.setenv("LORAFLOW_MAX_REQUESTS_PER_USER", "2")
    store, tokens, app = make_api()
    from loraflow.spec import parse_spec

    job = store.create_job(parse_spec({**_spec(), "dataset": {"path": "."}}, "s"), owner="mallory")
    store.update(job.id, state="training")
    with TestClient(app) as client:
        api = Api(client, tokens)
        url = f"/api/jobs/{job.id}/events/stream"
        with client.stream("GET", url, headers=_auth(api)), client.stream("GET", url, headers=_auth(api)):
            refused = api("GET", "/api/jobs")
            assert refused.status_code == 429 and "in flight" in refused.json()["detail"]
            assert api("GET", "/api/jobs", user="alice").status_code == 200  # another user is not touched
        store.update(job.id, state="completed")
        assert api("GET", "/api/jobs").status_code == 200
