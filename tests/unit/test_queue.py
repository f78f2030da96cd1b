"""Queue position and ETA for waiting jobs, computed from the store, and `job.queued` as the queue moves."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from loraflow.jobs import queue
from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.running.worker import Worker
from loraflow.spec import parse_spec

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STEPS_TO_APPROVAL = ["preparing", "provisioning", "training", "finishing", "awaiting_approval"]


def spec(name: str = "q", steps: int = 100):
    raw = {"name": name, "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux", "training": {"steps": steps}}
    return parse_spec(raw)


def pending(store: Store, owner: str, minute: int) -> str:
    job = store.create_job(spec(), owner=owner)
    store.update(job.id, created_at=T0 + timedelta(minutes=minute))
    return job.id


def training(store: Store, step: int, total: int, rate: float) -> str:
    """A job holding a slot: training, with a measured rate."""
    job = store.create_job(spec(steps=total), owner="carol")
    store.update(job.id, created_at=T0)
    for state in ("preparing", "provisioning", "training"):
        store.transition(job.id, state)
    store.update(job.id, lease={"provider": "local", "host": "here", "price_usd_h": 0.0})
    store.append_event(job.id, "progress", {"step": step, "total": total, "rate": rate}, step=step)
    return job.id


def queued(store: Store, job_id: str) -> list[dict]:
    return [e.data for e in store.events(job_id, types=[queue.QUEUED])]


@pytest.fixture
def store() -> Store:
    return Store()


def test_positions_per_user_and_eta_monotonic(store: Store) -> None:
    running = training(store, step=40, total=100, rate=2.0)  # 60 steps at 2 steps/s: 30 s left
    owners = ["alice", "bob", "alice", "alice", "bob"]
    ids = [pending(store, o, n + 1) for n, o in enumerate(owners)]
    places = queue.snapshot(store, slots=1)
    assert running not in places
    assert [places[i].position for i in ids] == [1, 2, 3, 4, 5]
    assert [places[i].position_for_user for i in ids] == [1, 1, 2, 3, 2]
    assert {places[i].waiting for i in ids} == {5}
    assert {places[i].waiting_for for i in ids} == {"slot"}
    etas = [places[i].eta_s for i in ids]
    assert etas[0] == pytest.approx(30, abs=1)  # the running job's measured remainder
    assert all(b > a for a, b in itertools.pairwise(etas)), etas  # each waits for the one ahead
    # Two slots: the first waiting job has a free slot now; the second takes whichever slot frees first.
    two = queue.snapshot(store, slots=2)
    assert two[ids[0]].eta_s == 0
    own = queue._estimate(store.get(ids[0]))
    assert own is not None and two[ids[1]].eta_s == pytest.approx(min(30, own.total_s), abs=1)
    assert queue.entry(store, store.get(running)) is None
    assert queue.entry(store, store.get(ids[2]), slots=1) == places[ids[2]]


def test_eta_from_catalog_when_nothing_measured(store: Store) -> None:
    first, second = pending(store, "alice", 1), pending(store, "alice", 2)
    places = queue.snapshot(store, slots=1)
    assert places[first].eta_s == 0
    est = queue._estimate(store.get(first))
    assert est is not None and places[second].eta_s == pytest.approx(est.total_s, abs=0.2)


def test_what_a_job_waits_for(store: Store) -> None:
    check = pending(store, "alice", 1)
    store.update_outputs(check, check="pending")
    claimed = pending(store, "alice", 2)
    Worker(store, slots=1, name="w").claim(1)  # the oldest: the check-pending one, which keeps waiting
    Worker(store, slots=1, name="w2").claim(1)  # `claimed` is starting: it holds a slot, it does not wait
    gpu = pending(store, "bob", 3)
    for state in ("preparing", "provisioning"):
        store.transition(gpu, state)
    slot = pending(store, "bob", 4)
    places = queue.snapshot(store, slots=4)
    assert claimed not in places
    assert {k: (v.position, v.waiting_for) for k, v in places.items()} == {
        check: (1, "check"),
        gpu: (2, "gpu"),
        slot: (3, "slot"),
    }
    est = queue._estimate(store.get(gpu))
    assert est is not None and places[gpu].eta_s is not None
    assert est.setup_s - 60 < places[gpu].eta_s <= est.setup_s  # what is left of its set-up
    store.append_event(gpu, "log", {"message": "offer snatched, trying the next"})  # news does not reset it
    assert queue.snapshot(store, slots=4)[gpu].eta_s <= places[gpu].eta_s


def test_approvals_queue_on_their_own(store: Store) -> None:
    slot = pending(store, "alice", 5)
    held = []
    for n, owner in enumerate(["bob", "alice"]):
        job_id = pending(store, owner, n)
        for state in STEPS_TO_APPROVAL:
            store.transition(job_id, state)
        held.append(job_id)
    places = queue.snapshot(store, slots=1)
    assert places[slot].position == 1 and places[slot].waiting == 1  # approvals do not wait for slots
    assert [(places[j].position, places[j].position_for_user, places[j].waiting_for) for j in held] == [
        (1, 1, "approval"),
        (2, 1, "approval"),
    ]
    assert places[held[0]].eta_s is None
    queue.announce(store, slots=1)
    assert [d["waiting_for"] for d in queued(store, held[1])] == ["approval"]


def test_job_queued_events_follow_the_queue(store: Store) -> None:
    running = training(store, step=0, total=100, rate=1.0)
    a, b, c = (pending(store, o, n) for n, o in enumerate(["alice", "bob", "alice"], start=1))
    assert sorted(queue.announce(store, slots=1)) == sorted([a, b, c])
    assert queue.announce(store, slots=1) == []  # nothing moved: nothing new
    assert [d["position"] for d in queued(store, c)] == [3]
    # The running job ends; the worker takes `a`: everyone behind moves up once.
    store.transition(running, "finishing")
    store.transition(running, "completed")
    store.update(a, worker="w")
    assert sorted(queue.announce(store, slots=1)) == sorted([b, c])
    assert queue.announce(store, slots=1) == []
    assert [(d["position"], d["position_for_user"]) for d in queued(store, b)] == [(2, 1), (1, 1)]
    assert [(d["position"], d["position_for_user"]) for d in queued(store, c)] == [(3, 2), (2, 1)]
    assert len(queued(store, a)) == 1  # it left the queue: no more news for it
    assert all(d["eta_s"] is not None and d["waiting"] >= 2 for d in queued(store, c))


def test_announcers_at_once_record_each_change_once(store: Store) -> None:
    ids = [pending(store, "alice", n) for n in range(4)]
    barrier = threading.Barrier(3)

    def announce() -> None:
        s = Store()
        barrier.wait()
        queue.announce(s, slots=1)

    threads = [threading.Thread(target=announce) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [len(queued(store, i)) for i in ids] == [1, 1, 1, 1]


def test_a_resumed_job_is_announced_again(store: Store) -> None:
    job = pending(store, "alice", 1)
    queue.announce(store, slots=1)
    store.transition(job, "preparing")
    store.transition(job, "stopped")
    store.transition(job, "pending", data={"resume": True})
    assert queue.announce(store, slots=1) == [job]
    assert [d["position"] for d in queued(store, job)] == [1, 1]


def test_worker_tick_announces(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [pending(store, "alice", n) for n in range(3)]
    w = Worker(store, slots=1, name="w", follow=False)
    monkeypatch.setattr(w, "_keep", lambda job: False)  # busy in its slot, no runner started
    assert w.tick() == [ids[0]]
    assert queued(store, ids[0]) == []  # taken: it does not wait
    assert [d["position"] for d in queued(store, ids[1])] == [1]
    assert [d["position"] for d in queued(store, ids[2])] == [2]
    w.tick()
    assert len(queued(store, ids[2])) == 1  # still second: no second event
    assert set(w._queue_seen) == {ids[1], ids[2]}
    store.transition(ids[1], "cancelled")  # leaves the queue: the last one moves up
    w.tick()
    assert [d["position"] for d in queued(store, ids[2])] == [2, 1]
    assert set(w._queue_seen) == {ids[2]}


def test_human_line() -> None:
    e = queue.QueueEntry(3, 1, 4, "slot", 125.0)
    assert e.line() == "#3 (yours #1) ~2m"
    assert queue.QueueEntry(1, 1, 1, "gpu", 5000).line() == "#1 gpu ~1h23m"
    assert JobState.PENDING.value == "pending"


def test_api_cli_and_page_show_the_place(store: Store, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from loraflow.server.app import ServiceConfig, create_app
    from loraflow.server.tokens import create_token
    from loraflow.server.ui import install

    monkeypatch.setenv("LORAFLOW_QUEUE_SLOTS", "1")  # what `serve --workers 1` sets
    running = training(store, step=50, total=100, rate=1.0)
    a1, b1, a2 = (pending(store, o, n) for n, o in enumerate(["alice", "bob", "alice"], start=1))
    tokens = {u: create_token(store, u) for u in ("alice", "carol")}
    app = create_app(store, ServiceConfig(), sweep_every_s=None)
    install(app)
    with TestClient(app) as client:

        def get(url: str, user: str = "alice"):
            return client.get(url, headers={"Authorization": f"Bearer {tokens[user]}"}).json()

        one = get(f"/api/jobs/{a2}")["queue"]
        assert (one["position"], one["position_for_user"], one["waiting"], one["waiting_for"]) == (3, 2, 3, "slot")
        assert one["eta_s"] > get(f"/api/jobs/{a1}")["queue"]["eta_s"] > 0
        listed = {j["id"]: j["queue"] for j in get("/api/jobs")["jobs"]}
        assert set(listed) == {a1, a2} and listed[a1]["position"] == 1 and listed[a2]["position"] == 3
        assert get(f"/api/jobs/{running}", "carol")["queue"] is None  # training: not waiting
        from tests.server.test_abuse_web import log_in

        log_in(client, tokens["alice"])  # a web session comes from logging in with an API token
        page = client.get(f"/jobs/{a2}")
        assert page.status_code == 200 and 'id="job-queue"' in page.text and "#3 of 3" in page.text
    from loraflow.cli.output import console

    monkeypatch.setattr(console, "width", 200)  # the whole table on one line per job
    out = cli("jobs", "list")
    assert out.code == 0 and "queue" in out.out and "#3 (yours #2)" in out.out
    rows = {j["id"]: j["queue"] for j in json.loads(cli("jobs", "list", "--json").out)}
    assert rows[running] is None and rows[b1]["position"] == 2
