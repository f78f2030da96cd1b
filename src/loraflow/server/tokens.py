"""API tokens: random, shown once, stored only as a SHA-256 hash (they are high-entropy, so a slow
password hash adds nothing), each belonging to one user who owns the jobs made with it.

A web session is derived from the API token it logged in with: its own random value with the prefix
`lfs_`, a row labelled `web session:<parent id>`, valid only while that token is (revoking the token
ends its sessions), for `LORAFLOW_SESSION_HOURS` (168) after it was made, counted by the server, and
never accepted as an API bearer token (nor to log in again)."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from loraflow.errors import UserInputError
from loraflow.jobs.models import TokenRow
from loraflow.jobs.store import Store

PREFIX = "lft_"
SESSION_PREFIX = "lfs_"
SESSION_LABEL = "web session:"


def session_hours() -> float:
    return float(os.environ.get("LORAFLOW_SESSION_HOURS", 168))


@dataclass(frozen=True)
class User:
    name: str
    admin: bool = False


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(store: Store, user: str, label: str = "", admin: bool = False) -> str:
    if not user or not user.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(user) > 64:
        raise UserInputError(f"invalid user name {user!r}", fix="use letters, digits, dot, dash or underscore")
    token = PREFIX + secrets.token_urlsafe(32)
    with store.session() as s, s.begin():
        s.add(TokenRow(id=uuid.uuid4().hex[:12], user=user, label=label, hash=digest(token), admin=admin))
    return token


def lookup(store: Store, token: str) -> User | None:
    """The user of an API token (`lft_...`); None for anything else, a web session included."""
    if not token.startswith(PREFIX):
        return None
    row = _row(store, token)
    if row is None or row.label.startswith(SESSION_LABEL):
        return None
    return _touch(store, token, row)


def create_session(store: Store, api_token: str) -> str | None:
    """A new web session for a valid API token (None when it is not one)."""
    if lookup(store, api_token) is None:
        return None
    parent = _row(store, api_token)
    assert parent is not None
    session = SESSION_PREFIX + secrets.token_urlsafe(32)
    with store.session() as s, s.begin():
        s.add(TokenRow(id=uuid.uuid4().hex[:12], user=parent.user, label=f"{SESSION_LABEL}{parent.id}",
                       hash=digest(session), admin=parent.admin))
    return session


def lookup_session(store: Store, session: str) -> User | None:
    """The user of a web session: not revoked, not older than session_hours(), its API token still valid."""
    if not session.startswith(SESSION_PREFIX):
        return None
    row = _row(store, session)
    if row is None or not row.label.startswith(SESSION_LABEL) or row.created_at is None:
        return None
    made = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    if datetime.now(UTC) - made > timedelta(hours=session_hours()):
        return None
    with store.reader() as s:
        parent = s.get(TokenRow, row.label.removeprefix(SESSION_LABEL))
        if parent is None or parent.revoked:
            return None
    return _touch(store, session, row)


def _row(store: Store, token: str) -> TokenRow | None:
    """The token's row, detached, or None when there is none or it is revoked."""
    with store.reader() as s:
        row = s.execute(select(TokenRow).where(TokenRow.hash == digest(token))).scalar_one_or_none()
        if row is None or row.revoked:
            return None
        s.expunge(row)
        return row


_TOUCHED: dict[str, float] = {}  # token id -> when this process last wrote its last_used_at (monotonic)
_TOUCH_LOCK = threading.Lock()


def _touch(store: Store, token: str, row: TokenRow) -> User:
    """Record the token's use, at most once a minute per token and process: 300 requests arriving at once
    with one token used to queue 300 writes on the store's write lock and stall every other user."""
    now, last = datetime.now(UTC), row.last_used_at
    stale = last is None or now - (last if last.tzinfo else last.replace(tzinfo=UTC)) > timedelta(minutes=1)
    with _TOUCH_LOCK:
        due = stale and time.monotonic() - _TOUCHED.get(row.id, -120.0) > 60
        if due:
            _TOUCHED[row.id] = time.monotonic()
    if due:
        with store.session() as s, s.begin():
            s.execute(update(TokenRow).where(TokenRow.hash == digest(token)).values(last_used_at=now))
    return User(row.user, bool(row.admin))


def list_tokens(store: Store) -> list[dict[str, object]]:
    with store.reader() as s:
        rows = s.execute(select(TokenRow).order_by(TokenRow.created_at)).scalars().all()
        return [
            {
                "id": r.id,
                "user": r.user,
                "label": r.label,
                "admin": r.admin,
                "revoked": r.revoked,
                "created_at": r.created_at.isoformat() if r.created_at else None,
            }
            for r in rows
        ]


def revoke(store: Store, token_id: str) -> bool:
    with store.session() as s, s.begin():
        row = s.get(TokenRow, token_id)
        if row is None:
            return False
        row.revoked = True
        return True


def revoke_by_token(store: Store, token: str) -> None:
    with store.session() as s, s.begin():
        row = s.execute(select(TokenRow).where(TokenRow.hash == digest(token))).scalar_one_or_none()
        if row is not None:
            row.revoked = True
