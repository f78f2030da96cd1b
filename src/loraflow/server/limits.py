"""Bounded work per request and per user, so one token holder cannot freeze the server for everyone.

- `BodyLimit` (ASGI middleware): every request body is capped by its route, uploads at
  `max_upload_mb`, everything else (specs, captions, JSON) at `Maxima.body_bytes`; a declared
  Content-Length over the cap is refused before a byte is read, a chunked body as soon as it passes it.
- `Quotas`: per user, at most `work_per_user` parses, dataset checks, image checks and unpackings at
  once (each runs in a worker thread, never on the event loop), `streams_per_user` open event streams
  and `uploads_per_minute` uploads. Over a quota is a 429 with Retry-After (an upload's work waits up
  to WAIT_S for its user's slot, on the loop, holding no thread); nobody queues behind another user.

The numbers are in running/maxima.py (`LORAFLOW_MAX_*`). Counters live in this process: several
server processes behind one balancer each count their own share.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraflow.running.maxima import Maxima
from loraflow.server.problems import PROBLEM, Problem

T = TypeVar("T")
WAIT_S = 10.0  # how long an async route waits for one of its user's work slots before a 429
UPLOAD_ROUTES = ("/api/jobs", "/api/uploads", "/ui/uploads")  # exact paths: multipart datasets


class Quotas:
    """Per-user counters of work in flight, open streams and recent uploads (thread-safe)."""

    def __init__(self, maxima: Maxima) -> None:
        self.maxima = maxima
        self._lock = threading.Lock()
        self._work: Counter[str] = Counter()
        self._streams: Counter[str] = Counter()
        self._uploads: dict[str, deque[float]] = {}

    @contextmanager
    def _slot(self, counts: Counter[str], user: str, limit: int, what: str) -> Iterator[None]:
        with self._lock:
            if counts[user] >= limit:
                raise Problem(429, "too many requests", f"you already have {counts[user]} {what}; the limit is "
                              f"{limit}. Wait for one to finish", retry_after=1)
            counts[user] += 1
        try:
            yield
        finally:
            with self._lock:
                counts[user] -= 1

    def work(self, user: str) -> Any:
        """A slot for CPU work of this user's (a parse, a check, an unpack)."""
        return self._slot(self._work, user, self.maxima.work_per_user, "requests being checked")

    def stream(self, user: str) -> Any:
        """A slot for one open event stream of this user's."""
        return self._slot(self._streams, user, self.maxima.streams_per_user, "open event streams")

    def upload(self, user: str) -> None:
        """Count an upload; refused past uploads_per_minute in the last 60 seconds."""
        now = time.monotonic()
        with self._lock:
            recent = self._uploads.setdefault(user, deque())
            while recent and now - recent[0] > 60:
                recent.popleft()
            if len(recent) >= self.maxima.uploads_per_minute:
                wait = int(60 - (now - recent[0])) + 1
                raise Problem(429, "too many uploads", f"{len(recent)} uploads in the last minute; the limit is "
                              f"{self.maxima.uploads_per_minute} (try again in {wait} s)", retry_after=wait)
            recent.append(now)

    async def off_loop(self, user: str, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` in a worker thread under one of this user's work slots: the event loop stays free.
        A request waits (on the loop, holding no thread) up to WAIT_S for a slot of its own user's, so a
        user's few parallel submissions go through while a flood is refused."""
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                slot = self.work(user)
                slot.__enter__()
                break
            except Problem:
                if time.monotonic() > deadline:
                    raise
                await anyio.sleep(0.02)
        try:
            return await anyio.to_thread.run_sync(fn, *args)
        finally:
            slot.__exit__(None, None, None)


class InFlight:
    """At most `limit` requests in flight per credential (the Authorization header or the session cookie),
    counted before the credential is looked up: 300 requests at once with one token used to take every
    worker thread and store connection for their lookups and stall everyone (an open event stream counts
    for as long as it is open). Past it a 429 at once, costing the store nothing."""

    def __init__(self, app: ASGIApp, limit: Callable[[], int]) -> None:
        self.app, self.limit = app, limit
        self._counts: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers") or []) if scope["type"] == "http" else {}
        credential = headers.get(b"authorization") or _cookie(headers.get(b"cookie", b""))
        if not credential:
            await self.app(scope, receive, send)
            return
        key = hashlib.sha256(credential).hexdigest()
        if self._counts[key] >= self.limit():  # one event loop: no lock needed between check and count
            await _refuse(send, 429, "too many requests", "too many requests in flight with this credential; "
                          "wait for some to finish", scope.get("path", ""), retry_after=1)
            return
        self._counts[key] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._counts[key] -= 1
            if not self._counts[key]:
                del self._counts[key]


def _cookie(header: bytes) -> bytes:
    for part in header.split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == b"loraflow_session":
            return value
    return b""


class BodyLimit:
    """Refuse request bodies over their route's cap with a 413 problem, whether declared or streamed."""

    def __init__(self, app: ASGIApp, upload_bytes: Callable[[], int], body_bytes: Callable[[], int]) -> None:
        self.app, self.upload_bytes, self.body_bytes = app, upload_bytes, body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        upload = scope.get("method") == "POST" and scope.get("path", "").rstrip("/") in UPLOAD_ROUTES
        limit = self.upload_bytes() if upload else self.body_bytes()
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit, scope.get("path", ""))
            return
        state = {"seen": 0, "over": False, "started": False}

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["seen"] += len(message.get("body", b""))
                if state["seen"] > limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}  # the route stops reading; its answer is replaced
            return message

        async def guarded(message: Message) -> None:
            if state["over"]:
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await _too_large(send, limit, scope.get("path", ""))
                return
            await send(message)

        await self.app(scope, counted, guarded)


async def _too_large(send: Send, limit: int, path: str) -> None:
    detail = f"the request body is over this route's limit of {limit} bytes"
    await _refuse(send, 413, "request too large", detail, path, close=True)


async def _refuse(
    send: Send, status: int, title: str, detail: str, path: str, close: bool = False, retry_after: int = 0
) -> None:
    """A problem answer sent from a middleware, before any route ran."""
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail, "instance": path})
    headers = [(b"content-type", PROBLEM.encode()), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    if retry_after:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body.encode()})
