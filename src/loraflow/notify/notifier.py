"""Delivering the webhook outbox (notify/outbox.py): one event loop in one thread, one attempt at a time
per receiver, so a receiver that hangs delays only itself.

`Notifier` is a runner's: it queues its job's new events and delivers them while the runner lives, and on
stop delivers what is left within a bounded wait. `Dispatcher` is a worker's and `loraflow serve`'s: it
queues and delivers for every job, so notifications still pending when a runner ended (a receiver down for
hours, a runner killed) go out later, retried with the outbox's backoff, whoever restarted meanwhile.
Both are the same loop; only which jobs they look at differs. The store is asked from the loop thread
(short queries); the waits for receivers are asynchronous.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import httpx

from loraflow.jobs.store import Store
from loraflow.notify import outbox
from loraflow.notify.outbox import Policy
from loraflow.notify.webhooks import Sender, deliver_async, sender_for, signed_request, target_url
from loraflow.spec import NotificationTarget

log = logging.getLogger(__name__)


class Dispatcher:
    """Queue and deliver: for one job (`job_id`, with its `targets`) or for every job (both None)."""

    def __init__(
        self,
        store: Store,
        job_id: str | None = None,
        targets: list[NotificationTarget] | None = None,
        policy: Policy | None = None,
        poll_s: float = 0.5,
        after_seq: int = 0,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.targets = targets
        self.policy = policy or Policy.from_env()
        self.poll_s = poll_s
        self.after_seq = after_seq
        self._stop = threading.Event()
        self._flush_timeout_s = 30.0
        self._flying: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._senders: dict[str, tuple[list[NotificationTarget], Sender]] = {}
        name = f"notify:{job_id}" if job_id else "notify:all"
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True, name=name)

    def start(self) -> Dispatcher:
        self._thread.start()
        return self

    def stop(self, flush_timeout_s: float = 30.0) -> None:
        """Deliver what is due (bounded wait), then end the thread; the rest stays in the outbox."""
        self._flush_timeout_s = flush_timeout_s
        self._stop.set()
        self._thread.join(flush_timeout_s + self.poll_s + 10)

    # --- on the loop -----------------------------------------------------------------------------

    def _for(self, job_id: str) -> tuple[list[NotificationTarget], Sender]:
        if job_id not in self._senders:
            job = self.store.get(job_id)
            targets = self.targets if self.targets is not None and job_id == self.job_id else None
            self._senders[job_id] = (targets or job.train_spec.notifications, sender_for(job))
        return self._senders[job_id]

    def _round(self, client: httpx.AsyncClient) -> None:
        jobs = [self.job_id] if self.job_id else outbox.jobs_to_scan(self.store)
        for job_id in jobs:
            targets, _ = self._for(job_id)
            outbox.enqueue(self.store, job_id, targets, self.policy, self.after_seq)
        for row in outbox.due(self.store, self.job_id):
            key = (row.job_id, row.target)
            if key in self._flying and not self._flying[key].done():
                continue
            targets, _ = self._for(row.job_id)
            if row.target >= len(targets) or not outbox.claim(self.store, row.id, self.policy):
                continue
            self._flying[key] = asyncio.ensure_future(self._attempt(client, row, targets[row.target]))

    async def _attempt(self, client: httpx.AsyncClient, row: Any, target: NotificationTarget) -> None:
        """One POST of one row, with the policy's timeout, then its outcome recorded."""
        _, sender = self._for(row.job_id)
        url = target_url(target)
        try:
            if url is None:
                ok, final, status, error = False, True, None, f"{target.url_env} is not set"
            else:
                body, headers = signed_request(row.payload, target.type, target.chat_id, sender.secret)
                result = await deliver_async(client, url, body, headers, 1, 0.0, self.policy.timeout_s, sender.policy)
                status, ok, error = result.status, result.ok, result.error
                final = not ok and ((error or "").startswith("refused") or _final_status(status))
            outbox.settle(self.store, row, target, ok, final, status, error, self.policy)
        except asyncio.CancelledError:
            outbox.release(self.store, row.id)
            raise

    async def _run(self) -> None:
        async with httpx.AsyncClient() as client:
            while not self._stop.is_set():
                try:
                    self._round(client)
                except Exception:  # the store away a moment: the outbox keeps everything; try again
                    log.exception("webhook outbox round failed")
                await asyncio.sleep(self.poll_s)
            await self._flush(client)

    async def _flush(self, client: httpx.AsyncClient) -> None:
        """What is due now goes out before the thread ends (bounded); later retries are left to a worker."""
        deadline = time.monotonic() + self._flush_timeout_s
        while time.monotonic() < deadline:
            try:
                self._round(client)
            except Exception:
                log.exception("webhook outbox round failed")
                break
            flying = [t for t in self._flying.values() if not t.done()]
            if not flying:
                break
            await asyncio.wait(flying, timeout=max(0.0, deadline - time.monotonic()), return_when="FIRST_COMPLETED")
        late = [t for t in self._flying.values() if not t.done()]
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)


def _final_status(status: int | None) -> bool:
    return status is not None and 400 <= status < 500 and status != 429


class Notifier(Dispatcher):
    """A runner's dispatcher for its own job (the signature the runner and older callers use)."""

    def __init__(
        self,
        store: Store,
        job_id: str,
        targets: list[NotificationTarget],
        after_seq: int = 0,
        progress_every_s: float = 30.0,
        attempts: int = 5,
        base_delay_s: float | None = None,
        poll_s: float = 0.5,
    ) -> None:
        """`attempts` is kept for callers; the outbox's bound is time (Policy.give_up_h), not a count.
        `base_delay_s`: the first retry's delay (default: the environment's, see notify/outbox.py)."""
        retry = {} if base_delay_s is None else {"retry_s": base_delay_s}
        policy = Policy.from_env(progress_every_s=progress_every_s, **retry)
        super().__init__(store, job_id, targets, policy, poll_s, after_seq)

    def start(self) -> Notifier:
        super().start()
        return self


def flush_pending(store: Store, job_id: str, targets: list[NotificationTarget]) -> None:
    """Deliver what happened outside a runner (an approval from the CLI or the API), then return."""
    if targets:
        Notifier(store, job_id, targets, poll_s=0.05).start().stop()
