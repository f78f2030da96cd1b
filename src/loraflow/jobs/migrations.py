"""Schema versions. Each migration is a function applied once, in order, recorded in schema_version.

An ordered list of small functions is all this project needs; it works the same on SQLite and
PostgreSQL and keeps Alembic's environment files out of a package users pip-install.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, Engine, inspect, select

from loraflow.jobs.models import Base, SchemaVersion


def _v1_initial(conn: Connection) -> None:
    Base.metadata.create_all(conn)


MIGRATIONS: list[Callable[[Connection], None]] = [_v1_initial]
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
