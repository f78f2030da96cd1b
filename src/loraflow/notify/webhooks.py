"""Delivering notifications without ever slowing training.

A Notifier follows one job's event log from the store (the same stream every other consumer reads) in
its own thread and hands each event to one worker thread per target, each with its own queue, so a
receiver that hangs delays nobody else. Deliveries retry with exponential backoff; every result is
recorded as a `webhook.delivery` event. Progress is sent at most every `progress_every_s` seconds.
"""

from __future__ import annotations

import asyncio
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


def final_result(status: int, attempt: int) -> Result | None:
    """The outcome once a response settles it: 2xx is done, 4xx other than 429 is final; else retry."""
    if status < 300:
        return Result(True, attempt, status)
    if 400 <= status < 500 and status != 429:
        return Result(False, attempt, status, f"HTTP {status}")
    return None


def deliver(
    url: str,
    body: bytes,
    headers: dict[str, str],
    attempts: int = 5,
    base_delay_s: float = 1.0,
    timeout_s: float = 10.0,
) -> Result:
    """Blocking `deliver_async`, for the notifier's per-target threads and the CLI (one policy, one loop)."""

    async def once() -> Result:
        async with httpx.AsyncClient() as client:
            return await deliver_async(client, url, body, headers, attempts, base_delay_s, timeout_s)

    return asyncio.run(once())


async def deliver_async(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    attempts: int = 5,
    base_delay_s: float = 1.0,
    timeout_s: float = 10.0,
) -> Result:
    """POST with retries on errors, timeouts, 429 and 5xx; 4xx other than 429 is final. Waits without a
    thread, so the follower's event loop delivers for every job it follows."""
    status: int | None = None
    error: str | None = None
    for attempt in range(1, attempts + 1):
        try:
            status = (await client.post(url, content=body, headers=headers, timeout=timeout_s)).status_code
            if (result := final_result(status, attempt)) is not None:
                return result
            error = f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if attempt < attempts:
            await asyncio.sleep(base_delay_s * 2 ** (attempt - 1))
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


async def send(
    client: httpx.AsyncClient | None,
    target: NotificationTarget,
    p: dict[str, Any],
    attempts: int = 5,
    base_delay_s: float = 1.0,
) -> Result:
    """One notification to one target, in the target's format, signed, with retries (a client of its own
    when none is given)."""
    url = target_url(target)
    if url is None:
        return Result(False, 0, None, f"{target.url_env} is not set")
    body, headers = signed_request(p, target.type, target.chat_id)
    if client is not None:
        return await deliver_async(client, url, body, headers, attempts, base_delay_s)
    async with httpx.AsyncClient() as own:
        return await deliver_async(own, url, body, headers, attempts, base_delay_s)


def delivery_record(p: dict[str, Any], target: NotificationTarget, result: Result) -> dict[str, Any]:
    """The `webhook.delivery` event's data: never the URL itself (it may carry a token), only its host."""
    url = target_url(target) or ""
    return {
        "event": p["event"],
        "seq": p["seq"],
        "target": target.type,
        "host": httpx.URL(url).host if url else None,
        "ok": result.ok,
        "attempts": result.attempts,
        "status": result.status,
        "error": result.error,
    }


def wants(target: NotificationTarget, name: str) -> bool:
    return "*" in target.events or name in target.events


class Selector:
    """Which of a job's events become notifications: named ones only, progress at most every N seconds."""

    def __init__(self, after_seq: int = 0, progress_every_s: float = 30.0) -> None:
        self.seq = after_seq
        self.progress_every_s = progress_every_s
        # Not 0.0: time.monotonic() counts from boot, so on a machine up for less than progress_every_s
        # every progress notification would be dropped, the first one included.
        self._last_progress = float("-inf")

    def pick(self, events: list[Any], job: Any) -> list[dict[str, Any]]:
        out = []
        for event in events:
            if event.seq <= self.seq:  # already handled (a re-read, or before the resume point)
                continue
            self.seq = event.seq
            name = webhook_name(event)
            if name is None:
                continue
            if name == "job.progress":
                now = time.monotonic()
                if now - self._last_progress < self.progress_every_s:
                    continue
                self._last_progress = now
            out.append(payload(name, event, job))
        return out


class _Worker(threading.Thread):
    def __init__(self, notifier: Notifier, target: NotificationTarget) -> None:
        super().__init__(daemon=True)
        self.notifier = notifier
        self.target = target
        self.queue: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def run(self) -> None:
        n = self.notifier
        while (p := self.queue.get()) is not None:
            n.record(p, self.target, asyncio.run(send(None, self.target, p, n.attempts, n.base_delay_s)))


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
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        self.poll_s = poll_s
        self.workers = [_Worker(self, t) for t in targets]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self.selector = Selector(after_seq, progress_every_s)

    def start(self) -> Notifier:
        for w in self.workers:
            w.start()
        self._thread.start()
        return self

    def record(self, p: dict[str, Any], target: NotificationTarget, result: Result) -> None:
        self.store.append_event(self.job_id, "webhook.delivery", delivery_record(p, target, result))

    def _dispatch(self) -> None:
        events = self.store.events(self.job_id, after_seq=self.selector.seq)
        if not events:
            return
        for p in self.selector.pick(events, self.store.get(self.job_id)):
            for w in self.workers:
                if wants(w.target, p["event"]):
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
