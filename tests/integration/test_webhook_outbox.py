"""The durable webhook outbox with real receivers on loopback: a receiver that is down for a while, a slow
one beside a fast one across a runner restart, and two deliverers at once. Timings are scaled down through
the outbox's own settings (LORAFLOW_WEBHOOK_*); the mechanism is the one a service runs."""

from __future__ import annotations

import socket
import time

import pytest

from loraflow.jobs.store import Store
from loraflow.notify.notifier import Dispatcher, Notifier
from loraflow.notify.outbox import summary
from loraflow.spec import NotificationTarget, parse_spec
from tests.integration.test_local_jobs import wait_for
from tests.publish.test_webhooks import Receiver

ALL = ["job.created", "job.started", "job.progress", "checkpoint.saved", "job.completed"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(store: Store, urls: list[str]) -> tuple[str, list[NotificationTarget]]:
    """A job's life as its runner records it (every event that becomes a notification)."""
    targets = [NotificationTarget(type="webhook", url=u) for u in urls]
    spec = parse_spec(
        {
            "name": "w",
            "dataset": {"path": "/tmp/x"},
            "base_model": "tiny-flux",
            "notifications": [t.model_dump() for t in targets],
        }
    )
    job = store.create_job(spec)
    for state in ("preparing", "provisioning", "training"):
        store.transition(job.id, state)
    store.append_event(job.id, "progress", {"step": 3, "total": 3, "loss": 0.5}, step=3)
    store.append_event(job.id, "checkpoint.saved", {"step": 3, "path": "checkpoints/step-000003"})
    store.transition(job.id, "finishing")
    store.transition(job.id, "completed")
    store.append_event(job.id, "job.completed", {"bundle": "/x.zip"})
    return job.id, spec.notifications


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLOW_WEBHOOK_RETRY_S", "0.1")
    monkeypatch.setenv("LORAFLOW_WEBHOOK_MAX_DELAY_S", "0.5")
    monkeypatch.setenv("LORAFLOW_WEBHOOK_TIMEOUT_S", "5")


def test_a_receiver_down_for_a_while_gets_everything_in_order_once_back() -> None:
    """The receiver is down for the job's whole life and past its runner's end (before: five attempts over
    seconds, then nothing ever); once back, a worker's dispatcher delivers every event, in order."""
    store = Store()
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    job_id, targets = run_job(store, [url])
    notifier = Notifier(store, job_id, targets, poll_s=0.05).start()
    wait_for(lambda: summary(store, job_id, targets)[0]["pending"] == len(ALL), what="the events to be queued")
    wait_for(lambda: bool(summary(store, job_id, targets)[0]["last_error"]), what="a failed attempt")
    notifier.stop(flush_timeout_s=1)  # the runner ends while the receiver is still down
    down = summary(store, job_id, targets)[0]
    assert down["delivered"] == 0 and down["pending"] == len(ALL) and down["next_event"] == "job.created"
    time.sleep(1.0)  # the receiver stays down a while longer, with nobody delivering
    receiver = Receiver(port=port)
    worker = Dispatcher(Store(), poll_s=0.05).start()  # a worker (or `serve`) started later
    try:
        wait_for(lambda: len(receiver.received) >= len(ALL), what="everything to arrive")
        wait_for(lambda: summary(store, job_id, targets)[0]["pending"] == 0, what="the outbox to empty")
    finally:
        worker.stop(flush_timeout_s=2)
        receiver.close()
    assert receiver.names() == ALL
    seqs = [p["seq"] for p, _, _ in receiver.received]
    assert seqs == sorted(seqs)
    after = summary(store, job_id, targets)[0]
    assert after["delivered"] == len(ALL) and after["failed"] == 0


def test_a_slow_receiver_misses_nothing_across_a_runner_restart() -> None:
    """Two receivers, one slow: the runner restarts while the slow one is behind (before: the new runner
    resumed after the fast one's last delivery, so the slow one never got the last events)."""
    store = Store()
    fast, slow = Receiver(), Receiver(delay_s=0.4)
    try:
        job_id, targets = run_job(store, [fast.url, slow.url])
        first = Notifier(store, job_id, targets, poll_s=0.05).start()
        wait_for(lambda: len(fast.received) == len(ALL), what="the fast receiver")
        first.stop(flush_timeout_s=0.1)  # the runner goes; the slow receiver is behind
        assert len(slow.received) < len(ALL)
        second = Notifier(store, job_id, targets, poll_s=0.05).start()  # the runner started again
        wait_for(lambda: summary(store, job_id, targets)[1]["pending"] == 0, what="the slow receiver's queue")
        second.stop()
        assert fast.names() == ALL
        # At least once and in order: an attempt cut short by the restart may arrive twice, never out of order.
        names = slow.names()
        assert [n for i, n in enumerate(names) if n not in names[:i]] == ALL
        assert names[-1] == "job.completed"
    finally:
        fast.close()
        slow.close()


def test_a_slow_receiver_gets_one_attempt_at_a_time_from_two_deliverers() -> None:
    """A runner's notifier and a worker's dispatcher deliver the same job at once: the slow receiver gets
    each event once, one request at a time (before: copies on every timeout, racing each other)."""
    store = Store()
    slow = Receiver(delay_s=0.3)
    try:
        job_id, targets = run_job(store, [slow.url])
        runner = Notifier(store, job_id, targets, poll_s=0.05).start()
        worker = Dispatcher(Store(), poll_s=0.05).start()
        wait_for(lambda: summary(store, job_id, targets)[0]["delivered"] == len(ALL), what="every event")
        runner.stop()
        worker.stop()
    finally:
        slow.close()
    assert slow.names() == ALL and slow.most_at_once == 1
    deliveries = store.events(job_id, types=["webhook.delivery"])
    assert len(deliveries) == len(ALL) and all(d.data["ok"] and d.data["attempts"] == 1 for d in deliveries)
