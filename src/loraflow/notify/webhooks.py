"""Delivering notifications without ever slowing training.

A Notifier follows one job's event log from the store (the same stream every other consumer reads) in
its own thread and hands each event to one worker thread per target, each with its own queue, so a
receiver that hangs delays nobody else. Deliveries retry with exponential backoff; every result is
recorded as a `webhook.delivery` event. Progress is sent at most every `progress_every_s` seconds.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from loraflow.jobs.store import Store
from loraflow.notify.formats import chat_body, payload, webhook_name
from loraflow.notify.signing import HEADER, sign
from loraflow.spec import NotificationTarget

USER_AGENT = "loraflow-webhooks/1"


@dataclass
class Result:
    ok: bool
    attempts: int
    status: int | None
    error: str | None = None


def target_url(target: NotificationTarget) -> str | None:
    """The receiver URL: written in the spec, or read from the environment when it is itself a secret."""
    if target.url_env:
        return os.environ.get(target.url_env)
    return target.url


def deliver(
    url: str,
    body: bytes,
    headers: dict[str, str],
    attempts: int = 5,
    base_delay_s: float = 1.0,
    timeout_s: float = 10.0,
) -> Result:
    """POST with retries on errors, timeouts, 429 and 5xx; 4xx other than 429 is final."""
    status: int | None = None
    error: str | None = None
    for attempt in range(1, attempts + 1):
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=timeout_s)
            status = response.status_code
            if status < 300:
                return Result(True, attempt, status)
            error = f"HTTP {status}"
            if 400 <= status < 500 and status != 429:
                return Result(False, attempt, status, error)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if attempt < attempts:
            time.sleep(base_delay_s * 2 ** (attempt - 1))
    return Result(False, attempts, status, error)


def signed_request(p: dict[str, Any], kind: str, chat_id: str | None) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(chat_body(kind, p, chat_id), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Loraflow-Event": p["event"],
        "X-Loraflow-Delivery": p.get("id") or uuid.uuid4().hex,
    }
    secret = os.environ.get("LORAFLOW_WEBHOOK_SECRET")
    if secret and kind == "webhook":
        headers[HEADER] = sign(secret, body)
    return body, headers


class _Worker(threading.Thread):
    def __init__(self, notifier: Notifier, target: NotificationTarget) -> None:
        super().__init__(daemon=True)
        self.notifier = notifier
        self.target = target
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def run(self) -> None:
        url = target_url(self.target)
        while (p := self.queue.get()) is not None:
            if url is None:
                self.notifier.record(p, self.target, Result(False, 0, None, f"{self.target.url_env} is not set"))
                continue
            body, headers = signed_request(p, self.target.type, self.target.chat_id)
            result = deliver(url, body, headers, self.notifier.attempts, self.notifier.base_delay_s)
            self.notifier.record(p, self.target, result)


class Notifier:
    def __init__(
        self,
        store: Store,
        job_id: str,
        targets: list[NotificationTarget],
        after_seq: int = 0,
        progress_every_s: float = 30.0,
        attempts: int = 5,
        base_delay_s: float = 1.0,
        poll_s: float = 0.5,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.seq = after_seq
        self.progress_every_s = progress_every_s
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        self.poll_s = poll_s
        self.workers = [_Worker(self, t) for t in targets]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._last_progress = 0.0

    def start(self) -> Notifier:
        for w in self.workers:
            w.start()
        self._thread.start()
        return self

    def record(self, p: dict[str, Any], target: NotificationTarget, result: Result) -> None:
        url = target_url(target) or ""
        self.store.append_event(
            self.job_id,
            "webhook.delivery",
            {
                "event": p["event"],
                "seq": p["seq"],
                "target": target.type,
                "host": httpx.URL(url).host if url else None,
                "ok": result.ok,
                "attempts": result.attempts,
                "status": result.status,
                "error": result.error,
            },
        )

    def _dispatch(self) -> None:
        events = self.store.events(self.job_id, after_seq=self.seq)
        if not events:
            return
        job = self.store.get(self.job_id)
        for event in events:
            self.seq = event.seq
            name = webhook_name(event)
            if name is None:
                continue
            if name == "job.progress":
                now = time.monotonic()
                if now - self._last_progress < self.progress_every_s:
                    continue
                self._last_progress = now
            p = payload(name, event, job)
            for w in self.workers:
                if "*" in w.target.events or name in w.target.events:
                    w.queue.put(p)

    def _follow(self) -> None:
        while not self._stop.is_set():
            self._dispatch()
            self._stop.wait(self.poll_s)
        self._dispatch()

    def stop(self, flush_timeout_s: float = 30.0) -> None:
        """Send what is left (bounded wait), then end the threads."""
        self._stop.set()
        self._thread.join(flush_timeout_s)
        deadline = time.monotonic() + flush_timeout_s
        for w in self.workers:
            w.queue.put(None)
        for w in self.workers:
            w.join(max(0.0, deadline - time.monotonic()))


def resume_point(store: Store, job_id: str) -> int:
    """The last event already delivered, so a new notifier neither repeats nor skips (receivers dedupe by id)."""
    last = store.events(job_id, types=["webhook.delivery"], latest=True)
    return int(last[0].data.get("seq", 0)) if last else 0


def flush_pending(store: Store, job_id: str, targets: list[NotificationTarget]) -> None:
    """Deliver what happened outside a runner (an approval from the CLI or the API), then return."""
    if targets:
        Notifier(store, job_id, targets, after_seq=resume_point(store, job_id), poll_s=0.05).start().stop()
