"""The notifier: one job's notifications, one queue per target, delivered in order on an event loop.

There is one notifier. `AsyncNotifier` is all of it: it picks the notifications among a job's stored
events (notify/webhooks.py's Selector), queues each for the targets that want it and delivers them one
task per target, so a receiver that hangs delays only itself. The follower feeds it on its own loop,
with one httpx client for every job it follows. A runner process has no event loop, so `Notifier` runs
the same AsyncNotifier on a loop of one thread of its own, fed from the store every `poll_s`: how it is
driven is the only difference, never the signing, formats, retries, address checks or order.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import httpx

from loraflow.jobs.store import Store
from loraflow.notify.webhooks import Selector, delivery_record, resume_point, send, sender_for, wants
from loraflow.spec import NotificationTarget

Record = Callable[[str, dict[str, Any]], None]  # (event type, data) -> stored, or queued for storing


class AsyncNotifier:
    def __init__(
        self,
        store: Store,
        job_id: str,
        targets: list[NotificationTarget],
        client: httpx.AsyncClient,
        record: Record,
        after_seq: int | None = None,
        progress_every_s: float = 30.0,
        attempts: int = 5,
        base_delay_s: float = 1.0,
    ) -> None:
        """Call on the loop that delivers. `after_seq` None: resume after the last recorded delivery."""
        self.store = store
        self.job_id = job_id
        self.client = client
        self.record = record
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        start = resume_point(store, job_id) if after_seq is None else after_seq
        self.selector = Selector(start, progress_every_s)
        self.sender = sender_for(store.get(job_id))  # the job's address policy and signing secret
        self.queues: list[tuple[NotificationTarget, asyncio.Queue[dict[str, Any] | None]]] = [
            (t, asyncio.Queue()) for t in targets
        ]
        self.tasks = [asyncio.create_task(self._deliver(t, q)) for t, q in self.queues]

    def feed(self, events: list[Any], job: Any) -> None:
        """Queue the notifications among newly stored events (in order, after the resume point)."""
        for p in self.selector.pick(events, job):
            for target, queue in self.queues:
                if wants(target, p["event"]):
                    queue.put_nowait(p)

    async def _deliver(self, target: NotificationTarget, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        while (p := await queue.get()) is not None:
            result = await send(self.client, target, p, self.attempts, self.base_delay_s, self.sender)
            self.record("webhook.delivery", delivery_record(p, target, result))

    async def close(self, flush_timeout_s: float = 30.0) -> None:
        """Deliver what is queued (bounded wait); the next notifier resumes after the last record."""
        for _, queue in self.queues:
            queue.put_nowait(None)
        _, late = await asyncio.wait(self.tasks, timeout=flush_timeout_s) if self.tasks else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


class Notifier:
    """AsyncNotifier for a runner process: its loop runs in one thread, so training never waits on it."""

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
        self.targets = targets
        self.poll_s = poll_s
        self.options: dict[str, Any] = {
            "after_seq": after_seq,
            "progress_every_s": progress_every_s,
            "attempts": attempts,
            "base_delay_s": base_delay_s,
        }
        self._stop = threading.Event()
        self._flush_timeout_s = 30.0
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True, name=f"notify:{job_id}")

    def start(self) -> Notifier:
        self._thread.start()
        return self

    def _record(self, type_: str, data: dict[str, Any]) -> None:
        self.store.append_event(self.job_id, type_, data)

    def _feed(self, notifier: AsyncNotifier) -> None:
        events = self.store.events(self.job_id, after_seq=notifier.selector.seq)
        if events:
            notifier.feed(events, self.store.get(self.job_id))

    async def _run(self) -> None:
        async with httpx.AsyncClient() as client:
            notifier = AsyncNotifier(self.store, self.job_id, self.targets, client, self._record, **self.options)
            while not self._stop.is_set():
                self._feed(notifier)
                await asyncio.sleep(self.poll_s)
            self._feed(notifier)  # what happened up to the stop
            await notifier.close(self._flush_timeout_s)

    def stop(self, flush_timeout_s: float = 30.0) -> None:
        """Send what is left (bounded wait), then end the thread."""
        self._flush_timeout_s = flush_timeout_s
        self._stop.set()
        self._thread.join(flush_timeout_s + self.poll_s + 10)


def flush_pending(store: Store, job_id: str, targets: list[NotificationTarget]) -> None:
    """Deliver what happened outside a runner (an approval from the CLI or the API), then return."""
    if targets:
        Notifier(store, job_id, targets, after_seq=resume_point(store, job_id), poll_s=0.05).start().stop()
