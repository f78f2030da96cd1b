"""Webhooks for jobs the follower follows: the Notifier's policy on the follower's event loop.

One queue and one delivering task per target (a receiver that hangs delays only itself), no thread;
delivery records go through the follower's batched writes like every other event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from loraflow.jobs.store import Store
from loraflow.notify.webhooks import Selector, delivery_record, resume_point, send, sender_for, wants
from loraflow.spec import NotificationTarget

Record = Callable[[str, dict[str, Any]], None]  # (event type, data) -> queued for writing


class AsyncNotifier:
    def __init__(
        self, store: Store, job_id: str, targets: list[NotificationTarget], client: httpx.AsyncClient, record: Record
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.client = client
        self.record = record
        self.selector = Selector(resume_point(store, job_id))
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
            result = await send(self.client, target, p, sender=self.sender)
            self.record("webhook.delivery", delivery_record(p, target, result))

    async def close(self, flush_timeout_s: float = 30.0) -> None:
        """Deliver what is queued (bounded wait); the runner that takes over resumes after the last record."""
        for _, queue in self.queues:
            queue.put_nowait(None)
        _, late = await asyncio.wait(self.tasks, timeout=flush_timeout_s)
        for task in late:
            task.cancel()
