"""The server's event loop never waits on the store (issue 29): one loop answers every user, so a store
read inside an `async` route (a few ms, or seconds behind another process's SQLite write lock) is a wait
for every request of every user. Before: a submission counted the user's jobs on the loop, and each of an
abuser's 300 stream requests read the job on the loop before the stream quota refused it."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from loraflow.jobs.store import Store
from loraflow.server.app import ServiceConfig, create_app
from loraflow.server.tokens import create_token
from loraflow.spec import parse_spec
from tests.server.test_api import dataset_zip

SPEC = '{"name": "work", "base_model": "tiny-flux", "dataset": {"trigger_word": "lfx"}}'


def watch_loop(store: Store) -> list[str]:
    """Every store method, wrapped: the names of those called from a thread running an event loop."""
    on_loop: list[str] = []
    for name in dir(Store):
        method = getattr(store, name)
        if name.startswith("_") or not callable(method):
            continue

        def wrapped(*args, _method=method, _name=name, **kwargs):
            try:
                asyncio.get_running_loop()
                on_loop.append(_name)
            except RuntimeError:
                pass  # a worker thread: where store calls belong
            return _method(*args, **kwargs)

        setattr(store, name, wrapped)
    return on_loop


def test_submissions_and_event_streams_read_the_store_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MAX_STREAMS_PER_USER", "1")
    store = Store()
    tokens = {u: create_token(store, u) for u in ("mallory", "alice")}
    live = store.create_job(parse_spec({"name": "live", "base_model": "tiny-flux", "dataset": {"path": "."}}, "s"),
                            owner="mallory")  # fmt: skip
    store.update(live.id, state="training")
    config = ServiceConfig.from_env()
    config.queue_for_workers = True  # the job waits in the store: no runner process starts
    on_loop = watch_loop(store)
    app = create_app(store, config, sweep_every_s=None)

    def auth(user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens[user]}"}

    with TestClient(app) as client:
        made = client.post("/api/jobs", data={"spec": SPEC}, files={"dataset": ("d.zip", dataset_zip())},
                           headers=auth("alice"))  # fmt: skip
        assert made.status_code == 201, made.text
        stream = f"/api/jobs/{live.id}/events/stream"
        with client.stream("GET", stream, headers=auth("mallory")) as first:
            assert first.status_code == 200
            assert client.get(stream, headers=auth("mallory")).status_code == 429  # over the quota
            assert client.get(stream, headers=auth("alice")).status_code == 403  # not hers
            store.update(live.id, state="completed")  # the open stream ends
    assert on_loop == [], f"store calls on the event loop: {sorted(set(on_loop))}"
