"""Riding out a store that is away for a while: PostgreSQL restarting, or a SQLite file another process
holds locked. The trainer is a process of its own and keeps training meanwhile; the runner, the follower
and the worker wait for the store with backoff and, once it answers, go on reading the trainer's log
from where they were, so what happened during the outage (progress, saves, the exit) is recorded then.

Only errors that pass are waited out (a lock, a refused or dropped connection); a full disk, a damaged
file or a bad query fail at once (the runner records a full disk with the store's reserve: runner.py).
How long to wait is the store's `ride_out_s`: long-lived processes (runner, worker, follower) wait
`LORAFLOW_STORE_OUTAGE_S` (default 900 s, the documented bound), a CLI command or an API request does
not wait (it says at once that the store is unreachable). After the bound a runner exits; the worker
(or `loraflow jobs list`) starts a new one for its job.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from loraflow.errors import LoraflowError

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])
OUTAGE_ENV = "LORAFLOW_STORE_OUTAGE_S"
DEFAULT_OUTAGE_S = 900.0
MAX_WAIT_S = 5.0  # between two tries
_NOT_PASSING = ("disk is full", "disk i/o error", "malformed", "not a database", "no such table", "readonly")


class StoreUnavailable(LoraflowError):
    """The store did not answer (unreachable, or locked by another process) within the bound."""


def outage_bound() -> float:
    """How long a long-lived process waits for the store: LORAFLOW_STORE_OUTAGE_S (seconds)."""
    try:
        return max(0.0, float(os.environ.get(OUTAGE_ENV, DEFAULT_OUTAGE_S)))
    except ValueError:
        return DEFAULT_OUTAGE_S


def passing(exc: BaseException) -> bool:
    """A failure that goes away by itself: a lock held by someone else, or the server gone a moment."""
    if not isinstance(exc, (OperationalError, InterfaceError, DBAPIError)):
        return False
    text = str(exc).lower()
    if any(word in text for word in _NOT_PASSING):
        return False
    if "sqlite" in type(getattr(exc, "orig", None)).__module__.lower() or "sqlite" in text:
        return "locked" in text or "busy" in text
    return isinstance(exc, (OperationalError, InterfaceError)) or bool(getattr(exc, "connection_invalidated", False))


def unavailable(url: str, exc: BaseException, waited_s: float) -> StoreUnavailable:
    """One clear line: which store, what it said, how long we waited, and what to do."""
    where = url.split("@")[-1] if "@" in url else url  # never a password
    first = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "locked" in first.lower():
        fix = "another process holds the database locked: let it finish, or find it with `fuser` on the file"
    else:
        fix = "start the database server (or check LORAFLOW_DATABASE_URL), then run the command again"
    waited = f" after {waited_s:.0f}s of retries" if waited_s >= 1 else ""
    return StoreUnavailable(f"the job store ({where}) is unavailable{waited}: {first}", fix=fix)


def ride_out(fn: F) -> F:
    """Retry a Store method while the store is away, for at most the store's `ride_out_s`."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        began: float | None = None
        delay = 0.2
        while True:
            try:
                result = fn(self, *args, **kwargs)
            except Exception as exc:
                if not passing(exc):
                    raise
                now = time.monotonic()
                if began is None:
                    began = now
                    if self.ride_out_s > 0:
                        log.warning("the job store is unavailable (%s); waiting up to %.0fs", exc, self.ride_out_s)
                if now - began >= self.ride_out_s:
                    raise unavailable(self.url, exc, now - began) from exc
                time.sleep(min(delay, self.ride_out_s - (now - began)))
                delay = min(delay * 2, MAX_WAIT_S)
                continue
            if began is not None:
                log.warning("the job store answers again after %.1fs", time.monotonic() - began)
            return result

    return wrapper  # type: ignore[return-value]
