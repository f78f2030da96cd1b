"""API tokens: random, shown once, stored only as a SHA-256 hash (they are high-entropy, so a slow
password hash adds nothing), each belonging to one user who owns the jobs made with it."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from loraflow.errors import UserInputError
from loraflow.jobs.models import TokenRow
from loraflow.jobs.store import Store

PREFIX = "lft_"


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
    if not token.startswith(PREFIX):
        return None
    with store.reader() as s:
        row = s.execute(select(TokenRow).where(TokenRow.hash == digest(token))).scalar_one_or_none()
        if row is None or row.revoked:
            return None
        user, last = User(row.user, bool(row.admin)), row.last_used_at
    now = datetime.now(UTC)
    if last is None or now - (last if last.tzinfo else last.replace(tzinfo=UTC)) > timedelta(minutes=1):
        with store.session() as s, s.begin():  # a write per token per minute, not per request
            s.execute(update(TokenRow).where(TokenRow.hash == digest(token)).values(last_used_at=now))
    return user


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
