"""Schema versions. Each migration is a function applied once, in order, recorded in schema_version.

An ordered list of small functions is all this project needs; it works the same on SQLite and
PostgreSQL and keeps Alembic's environment files out of a package users pip-install.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, Index, inspect, select

from loraflow.jobs.models import Base, JobRow, SchemaVersion, TokenRow


def _v1_initial(conn: Connection) -> None:
    from loraflow.jobs import platform_tables  # noqa: F401  (registered on Base: created with everything else)

    Base.metadata.create_all(conn)


def _v2_tokens_and_worker_index(conn: Connection) -> None:
    """API tokens (service), and an index for the workers' claim query."""
    TokenRow.__table__.create(conn, checkfirst=True)
    if "ix_jobs_worker_heartbeat" not in {i["name"] for i in inspect(conn).get_indexes("jobs")}:
        Index("ix_jobs_worker_heartbeat", JobRow.worker, JobRow.heartbeat_at).create(conn)


def _v3_platform(conn: Connection) -> None:
    """Credits ledger and accounts, and the model registry."""
    from loraflow.jobs.platform_tables import AccountRow, LedgerRow, ModelRow

    for table in (AccountRow, LedgerRow, ModelRow):
        table.__table__.create(conn, checkfirst=True)


def _v4_webhook_outbox(conn: Connection) -> None:
    """The durable webhook outbox and its per-job cursor (notify/outbox.py)."""
    from loraflow.jobs.models import OutboxCursorRow, OutboxRow

    for table in (OutboxRow, OutboxCursorRow):
        table.__table__.create(conn, checkfirst=True)


MIGRATIONS: list[Callable[[Connection], None]] = [
    _v1_initial,
    _v2_tokens_and_worker_index,
    _v3_platform,
    _v4_webhook_outbox,
]
LATEST = len(MIGRATIONS)


def current_version(conn: Connection) -> int:
    if not inspect(conn).has_table("schema_version"):
        return 0
    versions = conn.execute(select(SchemaVersion.version)).scalars().all()
    return max(versions, default=0)


def migrate(engine: Engine) -> int:
    """Bring the database to the latest version; returns the version it is at now."""
    with engine.begin() as conn:
        version = current_version(conn)
        if version > LATEST:
            from loraflow.errors import LoraflowError

            raise LoraflowError(
                f"the database is at schema version {version}, newer than this loraflow ({LATEST})",
                fix="upgrade loraflow",
            )
        for number in range(version + 1, LATEST + 1):
            MIGRATIONS[number - 1](conn)
            SchemaVersion.__table__.create(conn, checkfirst=True)
            conn.execute(SchemaVersion.__table__.insert().values(version=number))
    return LATEST
