"""Webhooks with a real receiving server on loopback: signatures, retries, order, hanging receivers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from loraflow.jobs.store import Store
from loraflow.notify.formats import chat_body, human_text
from loraflow.notify.notifier import Notifier
from loraflow.notify.signing import HEADER, sign, verify
from loraflow.notify.webhooks import Selector, deliver
from loraflow.spec import NotificationTarget, parse_spec

SECRET = "whsec_test_secret_value"
SPEC = parse_spec({"name": "w", "dataset": {"path": "/tmp/x"}, "base_model": "tiny-flux"})


class Receiver:
    """A webhook receiver on loopback. `delay_s`: it answers that late (a slow receiver); `port`: it listens
    where one was down before; `most_at_once`: the most requests it was answering at one time."""

    def __init__(self, fail_first: int = 0, hang: bool = False, delay_s: float = 0.0, port: int = 0) -> None:
        self.received: list[tuple[dict, bytes, dict]] = []
        self.fail_first = fail_first
        self.release = threading.Event()
        self.at_once = self.most_at_once = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    outer.at_once += 1
                    outer.most_at_once = max(outer.most_at_once, outer.at_once)
                if hang:
                    outer.release.wait(60)
                time.sleep(delay_s)
                with lock:
                    outer.at_once -= 1
                if outer.fail_first > 0:
                    outer.fail_first -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.received.append((json.loads(body), body, dict(self.headers)))
                self.send_response(204)
                self.end_headers()

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def names(self) -> list[str]:
        return [p["event"] for p, _, _ in self.received]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_signature_verifies_and_rejects_replays() -> None:
    body = b'{"event":"job.completed"}'
    header = sign(SECRET, body, timestamp=1_000_000)
    assert verify(SECRET, header, body, now=1_000_100)
    assert not verify(SECRET, header, body + b" ", now=1_000_100)  # tampered
    assert not verify("other", header, body, now=1_000_100)
    assert not verify(SECRET, header, body, now=1_000_000 + 301)  # outside the replay window
    assert not verify(SECRET, "garbage", body)


def test_retries_after_500s_then_delivers() -> None:
    r = Receiver(fail_first=2)
    try:
        result = deliver(r.url, b"{}", {"Content-Type": "application/json"}, attempts=4, base_delay_s=0.01)
        assert result.ok and result.attempts == 3 and result.status == 204
        gave_up = Receiver(fail_first=10)
        bad = deliver(gave_up.url, b"{}", {}, attempts=3, base_delay_s=0.01)
        assert not bad.ok and bad.attempts == 3 and bad.status == 500
        gave_up.close()
    finally:
        r.close()


def test_notifier_sends_signed_events_in_order(receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_WEBHOOK_SECRET", SECRET)
    store = Store()
    job = store.create_job(SPEC)
    n = Notifier(
        store,
        job.id,
        [NotificationTarget(type="webhook", url=receiver.url)],
        progress_every_s=3600,
        base_delay_s=0.01,
        poll_s=0.05,
    ).start()
    for state in ("preparing", "provisioning", "training"):
        store.transition(job.id, state)
    for step in (1, 2, 3):
        store.append_event(job.id, "progress", {"step": step, "total": 3, "loss": 0.5}, step=step)
    store.append_event(job.id, "checkpoint.saved", {"step": 3, "path": "checkpoints/step-000003"})
    store.transition(job.id, "finishing")
    store.transition(job.id, "completed")
    store.append_event(job.id, "job.completed", {"bundle": "/x.zip"})
    n.stop()
    names = [p["event"] for p, _, _ in receiver.received]
    assert names == ["job.created", "job.started", "job.progress", "checkpoint.saved", "job.completed"]
    for p, body, headers in receiver.received:
        assert verify(SECRET, headers[HEADER], body)
        assert headers["X-Loraflow-Event"] == p["event"] and p["job_id"] == job.id
    assert receiver.received[-1][0]["state"] == "completed"
    deliveries = store.events(job.id, types=["webhook.delivery"])
    assert len(deliveries) == 5 and all(d.data["ok"] for d in deliveries)
    assert SECRET not in json.dumps([e.to_dict() for e in store.events(job.id)])


def test_first_progress_is_sent_on_a_machine_booted_minutes_ago(monkeypatch: pytest.MonkeyPatch) -> None:
    """time.monotonic() counts from boot: a CI machine up for 4 minutes dropped every progress notice
    (the throttle started from 0.0), so `job.progress` never arrived."""
    monkeypatch.setattr("loraflow.notify.webhooks.time.monotonic", lambda: 240.0)
    store = Store()
    job = store.create_job(SPEC)
    for step in (1, 2):
        store.append_event(job.id, "progress", {"step": step, "total": 2, "loss": 0.5}, step=step)
    picked = Selector(progress_every_s=3600).pick(store.events(job.id), store.get(job.id))
    assert [p["event"] for p in picked] == ["job.created", "job.progress"] and picked[1]["step"] == 1


def test_hanging_receiver_delays_nobody(receiver: Receiver) -> None:
    hanging = Receiver(hang=True)
    store = Store()
    job = store.create_job(SPEC)
    n = Notifier(
        store,
        job.id,
        [NotificationTarget(type="webhook", url=hanging.url), NotificationTarget(type="webhook", url=receiver.url)],
        base_delay_s=0.01,
        poll_s=0.05,
    ).start()
    store.transition(job.id, "preparing")
    deadline = time.monotonic() + 30
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p["event"] for p, _, _ in receiver.received] == ["job.created"]  # the healthy one got it meanwhile
    assert hanging.received == []
    hanging.close()
    n.stop(flush_timeout_s=5)


def test_chat_formats() -> None:
    p = {
        "event": "job.completed",
        "name": "m",
        "job_id": "abc",
        "step": 30,
        "total": 30,
        "loss": 0.1234,
        "cost_usd": 0.5,
        "data": {},
    }
    assert human_text(p) == "**m** (abc): finished ✅ step 30/30, loss 0.1234"
    assert chat_body("discord", p)["content"].startswith("**m**")
    assert chat_body("slack", p) == {"text": "*m* (abc): finished ✅ step 30/30, loss 0.1234"}
    assert chat_body("telegram", p, "42")["chat_id"] == "42"


def test_notify_test_cli(receiver: Receiver, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_WEBHOOK_SECRET", SECRET)
    result = cli("notify", "test", receiver.url)
    assert result.code == 0 and "signed" in result.out
    p, body, headers = receiver.received[0]
    assert p["event"] == "job.completed" and verify(SECRET, headers[HEADER], body)
    slack = cli("notify", "test", receiver.url, "--type", "slack")
    assert slack.code == 0 and receiver.received[1][0] == {
        "text": "*loraflow-test* (test): finished ✅ step 1000/1000, loss 0.1234"
    }
    closed = cli("notify", "test", "http://127.0.0.1:9/nothing")
    assert closed.code == 1 and "not delivered" in closed.out


def test_wandb_sink_logs_and_survives(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import sys
    import types

    from loraflow.monitor.events import EngineEvent
    from loraflow.notify.wandb_sink import WandbSink

    calls: list[tuple] = []

    class Run:
        def log(self, data: dict, step: int) -> None:
            calls.append(("log", data, step))

        def finish(self) -> None:
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: calls.append(("init", kw["id"], kw["project"])) or Run()  # type: ignore[attr-defined]
    fake.Image = lambda path, caption=None: ("image", caption)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    spec = parse_spec(
        {
            "name": "w",
            "dataset": {"path": "/tmp/x"},
            "base_model": "tiny-flux",
            "wandb": {"enabled": True, "project": "loras"},
        }
    )
    sink = WandbSink(spec, "job1", tmp_path)
    assert sink.feed(EngineEvent("progress", {"step": 5, "total": 30, "loss": 0.5, "lr": 1e-3, "rate": 9.0})) is None
    assert (
        sink.feed(EngineEvent("sample.saved", {"step": 5, "path": "samples/step-000005/00.png", "prompt": "lfx"}))
        is None
    )
    sink.close()
    assert calls[0] == ("init", "job1", "loras")
    assert calls[1] == ("log", {"loss": 0.5, "lr": 1e-3, "rate": 9.0}, 5)
    assert calls[2] == ("log", {"samples": ("image", "lfx")}, 5) and calls[-1] == ("finish",)
    off = WandbSink(parse_spec({"name": "w", "dataset": {"path": "/x"}, "base_model": "tiny-flux"}), "j", tmp_path)
    assert off.feed(EngineEvent("progress", {"step": 1})) is None and off.run is None  # disabled: nothing at all


def test_a_runners_notifier_is_one_thread_whatever_the_targets(receiver: Receiver) -> None:
    """The runner drives the follower's AsyncNotifier on one loop thread: no thread per target."""
    store = Store()
    job = store.create_job(SPEC)
    before = threading.active_count()
    targets = [NotificationTarget(type="webhook", url=receiver.url, events=["job.created"]) for _ in range(3)]
    n = Notifier(store, job.id, targets, poll_s=0.05).start()
    assert threading.active_count() - before == 1
    n.stop()
    assert [p["event"] for p, _, _ in receiver.received] == ["job.created"] * 3
    assert len(store.events(job.id, types=["webhook.delivery"])) == 3
