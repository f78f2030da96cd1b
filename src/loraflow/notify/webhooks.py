"""One webhook delivery: which events become notifications, their body and signature, the POST with
retries and backoff, and the record of how it went.

Everything here is asynchronous on an httpx client so the follower's one event loop delivers for every
job it follows; notify/notifier.py queues and orders them (for a runner, on a loop of its own thread).
Deliveries retry with exponential backoff; progress is picked at most every `progress_every_s` seconds.
A job's Sender carries its address policy and signing secret (notify/addresses.py, notify/signing.py):
a service user's webhooks reach public addresses only, each redirect is checked before it is followed.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx

from loraflow.jobs.store import Store
from loraflow.notify.addresses import AddressPolicy, pinned, webhook_policy
from loraflow.notify.formats import chat_body, payload, webhook_name
from loraflow.notify.signing import HEADER, SECRET_ENV, secret_for, sign
from loraflow.spec import NotificationTarget

USER_AGENT = "loraflow-webhooks/1"
REDIRECTS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 3
ANYWHERE = AddressPolicy(allow_private=True)


class Refused(Exception):
    """The target (or a redirect's Location) is an address the policy forbids: final, never retried."""


@dataclass(frozen=True)
class Sender:
    """How one job's notifications go out: where they may go and what signs them."""

    policy: AddressPolicy
    secret: str | None


def sender_for(job: Any) -> Sender:
    return Sender(webhook_policy(job), secret_for(job))


def local_sender() -> Sender:
    """One's own machine: any address, signed with LORAFLOW_WEBHOOK_SECRET."""
    return Sender(ANYWHERE, os.environ.get(SECRET_ENV))


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
    policy: AddressPolicy = ANYWHERE,
) -> Result:
    """Blocking `deliver_async`, for the notifier's per-target threads and the CLI (one policy, one loop)."""

    async def once() -> Result:
        async with httpx.AsyncClient() as client:
            return await deliver_async(client, url, body, headers, attempts, base_delay_s, timeout_s, policy)

    return asyncio.run(once())


async def _post(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], timeout_s: float, policy: AddressPolicy
) -> int:
    """One POST, following at most MAX_REDIRECTS redirects by hand: every hop's address is checked (and
    pinned) under the policy before anything is sent to it."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        try:
            request_url, extra, extensions = (
                pinned(current, policy) if policy.allow_private else await asyncio.to_thread(pinned, current, policy)
            )
        except ValueError as exc:
            raise Refused(str(exc) if current == url else f"redirect to {current} refused: {exc}") from None
        response = await client.post(
            request_url, content=body, headers={**headers, **extra}, timeout=timeout_s, extensions=extensions
        )
        location = response.headers.get("location")
        if response.status_code not in REDIRECTS or not location:
            return response.status_code
        current = str(httpx.URL(current).join(location))
    raise Refused(f"more than {MAX_REDIRECTS} redirects")


async def deliver_async(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    attempts: int = 5,
    base_delay_s: float = 1.0,
    timeout_s: float = 10.0,
    policy: AddressPolicy = ANYWHERE,
) -> Result:
    """POST with retries on errors, timeouts, 429 and 5xx; 4xx other than 429 and a refused address are
    final. Waits without a thread, so the follower's event loop delivers for every job it follows."""
    status: int | None = None
    error: str | None = None
    for attempt in range(1, attempts + 1):
        try:
            status = await _post(client, url, body, headers, timeout_s, policy)
            if (result := final_result(status, attempt)) is not None:
                return result
            error = f"HTTP {status}"
        except Refused as exc:
            return Result(False, attempt, None, f"refused: {exc}")
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if attempt < attempts:
            await asyncio.sleep(base_delay_s * 2 ** (attempt - 1))
    return Result(False, attempts, status, error)


def signed_request(
    p: dict[str, Any], kind: str, chat_id: str | None, secret: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers; a webhook is signed with `secret` (default: LORAFLOW_WEBHOOK_SECRET)."""
    body = json.dumps(chat_body(kind, p, chat_id), separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Loraflow-Event": p["event"],
        "X-Loraflow-Delivery": p.get("id") or uuid.uuid4().hex,
    }
    secret = secret if secret is not None else os.environ.get(SECRET_ENV)
    if secret and kind == "webhook":
        headers[HEADER] = sign(secret, body)
    return body, headers


async def send(
    client: httpx.AsyncClient | None,
    target: NotificationTarget,
    p: dict[str, Any],
    attempts: int = 5,
    base_delay_s: float = 1.0,
    sender: Sender | None = None,
) -> Result:
    """One notification to one target, in the target's format, signed, with retries (a client of its own
    when none is given); `sender` is the job's policy and secret (default: one's own machine's)."""
    sender = sender or local_sender()
    url = target_url(target)
    if url is None:
        return Result(False, 0, None, f"{target.url_env} is not set")
    body, headers = signed_request(p, target.type, target.chat_id, sender.secret)
    if client is not None:
        return await deliver_async(client, url, body, headers, attempts, base_delay_s, policy=sender.policy)
    async with httpx.AsyncClient() as own:
        return await deliver_async(own, url, body, headers, attempts, base_delay_s, policy=sender.policy)


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
        self._last_progress: float | None = None  # monotonic time starts near 0 on a fresh boot: no guess

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
                if self._last_progress is not None and now - self._last_progress < self.progress_every_s:
                    continue
                self._last_progress = now
            out.append(payload(name, event, job))
        return out


def resume_point(store: Store, job_id: str) -> int:
    """The last event already delivered, so a new notifier neither repeats nor skips (receivers dedupe by id)."""
    last = store.events(job_id, types=["webhook.delivery"], latest=True)
    return int(last[0].data.get("seq", 0)) if last else 0
