"""Platform features through the API: credits that add up to the cent, the registry and trigger map,
review and external checks, service limits."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from fastapi.testclient import TestClient

from loraflow.jobs.states import JobState
from loraflow.jobs.store import Store
from loraflow.platform import credits
from loraflow.platform.config import PlatformConfig
from loraflow.server.app import ServiceConfig, create_app
from loraflow.server.tokens import create_token
from tests.server.test_api import SPEC, Api, dataset_zip, wait_done

PLATFORM = PlatformConfig(
    credits=True,
    points_per_usd=100,
    fee_percent=20,
    fee_fixed_usd=0.05,
    local_usd_per_hour=36.0,
    review="manual",
    auto_approve_users=["trusted"],
)


@pytest.fixture(autouse=True)
def shared_models(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_MODELS_DIR", str(tmp_path_factory.getbasetemp() / "shared-models"))


@contextmanager
def make_api(platform: PlatformConfig, service: ServiceConfig | None = None) -> Iterator[Api]:
    store = Store()
    tokens = {u: create_token(store, u) for u in ("alice", "bob", "trusted")}
    tokens["admin"] = create_token(store, "root", admin=True)
    with TestClient(create_app(store, service or ServiceConfig(), platform, sweep_every_s=None)) as client:
        yield Api(client, tokens)


@pytest.fixture
def api() -> Iterator[Api]:
    with make_api(PLATFORM) as client:
        yield client


def submit(api: Api, user: str = "alice", **changes: object):
    return api(
        "POST",
        "/api/jobs",
        user,
        data={"spec": yaml.safe_dump({**SPEC, **changes})},
        files={"dataset": ("d.zip", dataset_zip(), "application/zip")},
    )


def ledger(api: Api, user: str = "alice") -> dict:
    return api("GET", "/api/credits", user).json()


def job_entries(api: Api, job_id: str, user: str = "alice") -> dict[str, int]:
    sums: dict[str, int] = {}
    for e in ledger(api, user)["entries"]:
        if e["job_id"] == job_id:
            sums[e["kind"]] = sums.get(e["kind"], 0) + e["points"]
    return sums


def test_quote_hold_charge_release_add_up_for_completed_and_cancelled_jobs(api: Api) -> None:
    assert api("POST", "/api/credits/alice/deposit", "alice", json={"points": 5000}).status_code == 403
    assert (
        api("POST", "/api/credits/alice/deposit", "admin", json={"points": 5000, "note": "card"}).json()["available"]
        == 5000
    )
    quote = api("POST", "/api/quote", json={"spec": yaml.safe_dump(SPEC)}).json()
    assert quote["points"] == credits.to_points(quote["total_usd"], PLATFORM) > 0
    assert quote["total_usd"] == pytest.approx(quote["estimate_usd"] * 1.2 + 0.05, abs=1e-6)
    done = submit(api).json()
    held = ledger(api)
    assert held["held"] == quote["points"] and held["available"] == 5000 - quote["points"]
    wait_done(api, done["id"])
    cancelled = submit(api, training={"steps": 400}).json()
    assert api("POST", f"/api/jobs/{cancelled['id']}/cancel").status_code == 200
    wait_done(api, cancelled["id"])
    deadline = time.monotonic() + 30
    while api("GET", f"/api/jobs/{cancelled['id']}").json()["state"] != "cancelled" and time.monotonic() < deadline:
        time.sleep(0.2)
    api("POST", "/api/admin/sweep", "admin")
    api("POST", "/api/admin/sweep", "admin")  # settling twice changes nothing
    store = Store()
    for job_id in (done["id"], cancelled["id"]):
        sums = job_entries(api, job_id)
        job = store.get(job_id)
        usd, detail = credits.real_cost_usd(store, job, PLATFORM)
        expected = credits.to_points(usd * 1.2 + 0.05, PLATFORM)  # real cost + fee, in cents
        assert detail["local_seconds"] > 0 or job_id == cancelled["id"]  # cancelled before it ran: nothing used
        assert sums["charge"] == min(expected, sums["hold"]), (job.state, sums, usd)
        assert sums["charge"] + sums.get("release", 0) == sums["hold"]
    final = ledger(api)
    charged = sum(e["points"] for e in final["entries"] if e["kind"] == "charge")
    assert final["held"] == 0 and final["available"] == 5000 - charged and final["spent"] == charged
    settled = [e for e in final["entries"] if e["kind"] == "charge"]
    assert all(e["detail"]["cost_usd"] >= 0 and e["job_id"] for e in settled)
    # Support refunds part of a charge, never more than was charged.
    job_charge = job_entries(api, done["id"])["charge"]
    too_much = {"job_id": done["id"], "points": job_charge + 1}
    assert api("POST", "/api/credits/alice/refund", "admin", json=too_much).status_code == 400
    back = api("POST", "/api/credits/alice/refund", "admin", json={"job_id": done["id"], "points": 5, "note": "t1"})
    assert back.json()["available"] == final["available"] + 5 and back.json()["spent"] == charged - 5


def test_failed_and_budget_stopped_jobs_are_charged_from_their_leases(api: Api) -> None:
    """Settlement from recorded leases: the user's failure is charged, the platform's is not."""
    store = Store()
    api("POST", "/api/credits/bob/deposit", "admin", json={"points": 10_000})
    spec = store.get(submit(api, "bob").json()["id"]).train_spec
    wait_done(api, store.list_jobs(owner="bob")[0].id, "bob")
    api("POST", "/api/admin/sweep", "admin")
    cases = {"oom": True, "host_lost": False, None: True}  # error code -> charged
    for code, charged in cases.items():
        job = store.create_job(spec, owner="bob")
        credits.hold(store, "bob", job.id, 500)
        lease = {
            "provider": "vastai",
            "instance_id": 1,
            "gpu": "RTX 4090",
            "price_usd_h": 0.3456,
            "started_at": 1_000_000.0,
            "ended_at": 1_000_000.0 + 1234.5,
        }
        store.update_outputs(job.id, leases=[lease])
        for state in ("preparing", "provisioning", "training"):
            store.transition(job.id, state)
        if code is None:
            store.transition(job.id, JobState.STOPPED_BUDGET)
        else:
            store.append_event(job.id, "error", {"code": code, "message": "x"})
            store.transition(job.id, JobState.FAILED)
        api("POST", "/api/admin/sweep", "admin")
        sums = job_entries(api, job.id, "bob")
        cost = 0.3456 * 1234.5 / 3600  # 0.118512 USD
        expected = credits.to_points(cost * 1.2 + 0.05, PLATFORM) if charged else 0  # 20 cents or nothing
        assert sums.get("charge", 0) == expected == (20 if charged else 0)
        assert sums.get("charge", 0) + sums.get("release", 0) == 500
    assert ledger(api, "bob")["held"] == 0


def test_concurrent_submissions_cannot_overdraw(api: Api) -> None:
    quote = api("POST", "/api/quote", json={"spec": yaml.safe_dump(SPEC)}).json()
    api("POST", "/api/credits/alice/deposit", "admin", json={"points": quote["points"] + 1})
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(submit(api).status_code)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [201, 402, 402]
    assert ledger(api)["available"] == 1
    # The same race straight on the ledger, many at once: never negative.
    store = Store()
    api("POST", "/api/credits/carol/deposit", "admin", json={"points": 100})
    wins: list[bool] = []

    def grab(n: int) -> None:
        try:
            credits.hold(store, "carol", f"job{n}", 30)
            wins.append(True)
        except credits.InsufficientCredits:
            wins.append(False)

    threads = [threading.Thread(target=grab, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 3 and credits.balance(store, "carol").available == 10
    with pytest.raises(Exception, match="negative"):
        credits.add_entry(store, "carol", "adjustment", -11, by="root", note="too much")


def test_registry_review_visibility_and_trigger_map(api: Api) -> None:
    for user in ("alice", "trusted"):
        api("POST", f"/api/credits/{user}/deposit", "admin", json={"points": 5000})
    alice_job = submit(api, name="alicebot").json()["id"]
    trusted_job = submit(api, "trusted", name="trusty", dataset={"trigger_word": "trst"}).json()["id"]
    wait_done(api, alice_job)
    wait_done(api, trusted_job, "trusted")
    api("POST", "/api/admin/sweep", "admin")
    mine = api("GET", "/api/models", params={"mine": True}).json()
    (model,) = mine
    assert model["status"] == "in_review" and model["visibility"] == "private" and model["owner"] == "alice"
    lineage = model["trained_from"]
    assert lineage["job_id"] == alice_job and lineage["steps"] == 20 and lineage["engine"] == "builtin"
    assert lineage["dataset_hash"] and lineage["final_loss"] is not None and lineage["resolution"] == [64]
    assert model["files"][0]["sha256"] and model["files"][0]["size"] > 0
    slug = model["slug"]
    assert api("GET", f"/api/models/{slug}", "bob").status_code == 404  # private: invisible to others
    assert slug not in api("GET", "/api/models/trigger-map").json()
    assert api("PATCH", f"/api/models/{slug}", "bob", json={"visibility": "public"}).status_code == 404
    assert api("PATCH", f"/api/models/{slug}", json={"visibility": "galaxy"}).status_code == 400
    assert api("PATCH", f"/api/models/{slug}", json={"visibility": "public", "default_weight": 0.8}).status_code == 200
    assert slug not in api("GET", "/api/models/trigger-map").json()  # public but still in review
    assert api("POST", f"/api/models/{slug}/review", "alice", json={"decision": "approve"}).status_code == 403
    reviewed = api("POST", f"/api/models/{slug}/review", "admin", json={"decision": "approve", "reason": "ok"}).json()
    assert reviewed["status"] == "approved" and reviewed["decisions"][-1]["by"] == "root"
    assert reviewed["decisions"][-1]["at"]
    tmap = api("GET", "/api/models/trigger-map", "bob").json()
    assert tmap["lfx"]["slug"] == slug and tmap[slug]["weight"] == 0.8
    trusted = api("GET", "/api/models", "trusted", params={"mine": True}).json()[0]
    assert trusted["status"] == "approved"  # auto-approved by policy, but private: not in the map
    assert "trst" not in tmap
    assert api("GET", f"/api/models/{slug}", "bob").status_code == 200
    assert [m["slug"] for m in api("GET", "/api/models", "bob", params={"q": "alice"}).json()] == [slug]
    api("POST", f"/api/models/{slug}/use", "bob")
    assert api("GET", f"/api/models/{slug}").json()["usage_count"] == 1
    api("POST", f"/api/models/{slug}/review", "admin", json={"decision": "reject", "reason": "changed mind"})
    assert "lfx" not in api("GET", "/api/models/trigger-map").json()


class Hook(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Hook.seen.append(body)
        decision = {"bad": "deny", "wait": "pending"}.get(body["name"], "allow")
        raw = json.dumps({"decision": decision, "reason": f"{decision} by hook"}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        return


def test_external_check_and_service_limits() -> None:
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    platform = PlatformConfig(precheck_url=f"http://127.0.0.1:{hook.server_port}/check")
    service = ServiceConfig(max_steps=500, allowed_base_models=["tiny-flux"], max_budget_usd=10)
    with make_api(platform, service) as api:
        good = submit(api, name="good").json()
        bad = submit(api, name="bad").json()
        waiting = submit(api, name="wait").json()
        for job in (good, bad, waiting):
            assert job["state"] == "pending" and job["artifacts"]["check"] == "pending"
        time.sleep(1)
        assert api("GET", f"/api/jobs/{good['id']}").json()["state"] == "pending"  # held until the check
        api("POST", "/api/admin/sweep", "admin")
        assert wait_done(api, good["id"])["state"] == "completed"
        denied = api("GET", f"/api/jobs/{bad['id']}").json()
        assert denied["state"] == "cancelled" and "deny by hook" in denied["error"]
        decided = api("GET", f"/api/jobs/{bad['id']}/events", params={"type": "check.decided"}).json()["events"]
        assert decided[0]["data"]["decision"] == "deny" and decided[0]["data"]["by"] == "external check"
        assert api("GET", f"/api/jobs/{waiting['id']}").json()["state"] == "pending"
        assert {b["name"] for b in Hook.seen} >= {"good", "bad", "wait"}
        for changes, limit in [
            ({"training": {"steps": 600}}, "max_steps"),
            ({"base_model": "sdxl"}, "allowed"),
            ({"budget": {"max_usd": 50}}, "max_budget_usd"),
        ]:
            r = submit(api, **changes)
            assert r.status_code == 422 and limit in r.json()["detail"], r.text
    hook.shutdown()


def test_a_sweep_asks_the_external_check_through_one_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a new HTTP client (and TLS context, CA certificates parsed) per waiting job, every sweep: CPU the
    server's own users waited behind (issue 29's bench: a twentieth of the server's CPU under abuse)."""
    import httpx

    from loraflow.running.duties import run_prechecks
    from loraflow.spec import parse_spec

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    store = Store()
    for name in ("good", "bad", "wait"):
        job = store.create_job(parse_spec({**SPEC, "name": name, "dataset": {"path": "."}}, "s"), owner="alice")
        store.update_outputs(job.id, check="pending", queued=True)  # queued: nothing starts on "allow"
    built: list[object] = []
    real_init = httpx.Client.__init__
    monkeypatch.setattr(httpx.Client, "__init__", lambda c, *a, **kw: built.append(c) or real_init(c, *a, **kw))
    run_prechecks(store, PlatformConfig(precheck_url=f"http://127.0.0.1:{hook.server_port}/check"))
    hook.shutdown()
    checks = {j.name: j.outputs.check for j in store.list_jobs()}
    assert checks == {"good": "allow", "bad": "deny", "wait": "pending"}
    assert len(built) == 1


def test_a_quote_reads_the_spec_as_a_submission_does(api: Api) -> None:
    """Text that is not YAML used to be a 500 on /api/quote, and a server path a quote happily priced;
    the quote, the estimate and a submission now read a spec through one door."""
    broken = api("POST", "/api/quote", json={"spec": "name: [unclosed"})
    assert broken.status_code == 422 and "not valid YAML/JSON" in broken.json()["detail"]
    listed = api("POST", "/api/quote", json={"spec": "- a\n- b\n"})
    assert listed.status_code == 422 and "must be a mapping" in listed.json()["detail"]
    for route in ("/api/quote", "/api/estimate"):
        path = api("POST", route, json={"spec": yaml.safe_dump({**SPEC, "base_model": "/srv/models/flux"})})
        assert path.status_code == 422, route
        assert any("names a folder on the server" in e for e in path.json()["errors"]), path.json()
