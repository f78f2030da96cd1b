"""Platform tables, on the job store's metadata so the same migrations create them everywhere."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from loraflow.jobs.models import Base, utcnow


class AccountRow(Base):
    """One row per user: what a credit hold locks, so two submissions cannot both spend one balance."""

    __tablename__ = "accounts"

    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LedgerRow(Base):
    """Append-only: balances are sums over these rows, never a stored number that can drift."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # deposit, hold, charge, release, refund, adjustment
    points: Mapped[int] = mapped_column(Integer)  # positive, except adjustments
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    by: Mapped[str] = mapped_column(String(64), default="system")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_ledger_user", "user"), Index("ix_ledger_job", "job_id"))


class ModelRow(Base):
    """A trained model as a platform lists it: files, lineage, visibility and review status."""

    __tablename__ = "models"

    slug: Mapped[str] = mapped_column(String(96), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    owner: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(String(255))
    trigger_words: Mapped[list[str]] = mapped_column(JSON, default=list)
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    trained_from: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    published_to: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    status: Mapped[str] = mapped_column(String(16), default="in_review")
    nsfw: Mapped[bool] = mapped_column(default=False)
    usage_count: Mapped[int] = mapped_column(Integer, default=0)
    default_weight: Mapped[float] = mapped_column(default=1.0)
    decisions: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    job_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    __table_args__ = (Index("ix_models_owner", "owner"), Index("ix_models_job", "job_id"))
