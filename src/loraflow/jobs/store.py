"""The job store: jobs, their state changes and their append-only event log.

SQLite (a file under LORAFLOW_HOME, WAL mode) by default; the same code runs on PostgreSQL from a URL.
State changes and events are written in one transaction, so a reader never sees a state without the
event that explains it. Event sequence numbers come from the job row under a write lock, so they are
gap-free and ordered even with several processes writing.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event, func, select
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session, sessionmaker

from loraflow import paths
from loraflow.errors import NotFound
from loraflow.jobs.integrity import (
    check_before_open,
    damaged,
    ensure_reserve,
    mark_has_jobs,
    quick_check,
    sqlite_path,
)
from loraflow.jobs.migrations import migrate
from loraflow.jobs.models import EventRow, JobRow
from loraflow.jobs.outage import ride_out
from loraflow.jobs.outputs import JobOutputs
from loraflow.jobs.states import JobState, check_transition
from loraflow.spec import TrainSpec


@dataclass(frozen=True)
class Event:
    job_id: str
    seq: int
    ts: datetime
    type: str
    stage: str | None
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "seq": self.seq,
            "ts": self.ts.isoformat(),
            "type": self.type,
            "stage": self.stage,
            "data": self.data,
        }


@dataclass(frozen=True)
class Job:
    id: str
    name: str
    owner: str
    state: JobState
    stage: str | None
    engine: str
    base_model: str
    spec: dict[str, Any]
    step: int
    total_steps: int
    loss: float | None
    cost_usd: float
    error: str | None
    lease: dict[str, Any] | None
    outputs: JobOutputs  # stored in the `artifacts` column
    stages_done: list[str]
    created_at: datetime
    updated_at: datetime
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def train_spec(self) -> TrainSpec:
        return TrainSpec.model_validate(self.spec)

    @property
    def folder(self):
        return paths.job_dir(self.id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "owner": self.owner,
            "state": self.state.value,
            "stage": self.stage,
            "engine": self.engine,
            "base_model": self.base_model,
            "step": self.step,
            "total_steps": self.total_steps,
            "loss": self.loss,
            "cost_usd": round(self.cost_usd, 4),
            "error": self.error,
            "lease": self.lease,
            "artifacts": self.outputs.to_json(),
            "stages_done": self.stages_done,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _job(row: JobRow) -> Job:
    return Job(
        row.id,
        row.name,
        row.owner,
        JobState(row.state),
        row.stage,
        row.engine,
        row.base_model,
        row.spec,
        row.step,
        row.total_steps,
        row.loss,
        row.cost_usd,
        row.error,
        row.lease,
        JobOutputs.load(row.artifacts),
        list(row.stages_done or []),
        _aware(row.created_at),
        _aware(row.updated_at),
    )


def _event(row: EventRow) -> Event:
    return Event(row.job_id, row.seq, _aware(row.ts), row.type, row.stage, dict(row.data or {}))


def busy_s() -> float:
    """How long one SQLite statement waits for another process's lock (LORAFLOW_SQLITE_BUSY_S, default 60);
    past it the store's ride-out (jobs/outage.py) decides whether to wait longer."""
    try:
        return max(0.05, float(os.environ.get("LORAFLOW_SQLITE_BUSY_S", 60)))
    except ValueError:
        return 60.0


def make_engine(url: str, readonly: bool = False) -> Engine:
    """SQLite: writers take the write lock up front; readers (readonly) use plain deferred
    transactions, which WAL lets run beside a writer instead of queueing behind it."""
    if url.startswith("sqlite"):
        busy = busy_s()
        engine = create_engine(url, connect_args={"timeout": busy, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let BEGIN IMMEDIATE below manage transactions
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            # Take the write lock up front: a deferred read-then-write upgrade can fail under contention.
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """`ride_out_s`: how long each call waits out a store that is away (jobs/outage.py); 0 (a command, a
    request) says at once that it is unavailable, a runner or worker passes `outage_bound()`."""

    def __init__(self, url: str | None = None, ride_out_s: float = 0.0) -> None:
        self.url = url or paths.database_url()
        self.ride_out_s = ride_out_s
        check_before_open(self.url)  # a store that held jobs and is gone or empty: refused (jobs/integrity.py)
        self.engine = make_engine(self.url)
        try:
            self._migrate()
            quick_check(self.engine, self.url)
            ensure_reserve(self.url)
        except (DatabaseError, sqlite3.DatabaseError) as exc:  # "file is not a database", "malformed"
            path = sqlite_path(self.url)
            if path is None:
                raise
            self.engine.dispose()
            raise damaged(path, str(getattr(exc, "orig", None) or exc)) from None
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self.read_engine = make_engine(self.url, readonly=True) if self.url.startswith("sqlite") else self.engine
        self._reader = sessionmaker(self.read_engine, expire_on_commit=False)

    @ride_out
    def _migrate(self) -> None:
        migrate(self.engine)

    def session(self) -> Session:
        return self._session()

    def reader(self) -> Session:
        """A session for reads only: it never waits for the write lock."""
        return self._reader()

    def close(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()

    # --- jobs --------------------------------------------------------------------------------------

    @ride_out
    def create_job(
        self,
        spec: TrainSpec,
        owner: str = "local",
        job_id: str | None = None,
        outputs: dict[str, Any] | None = None,
        events: tuple[tuple[str, dict[str, Any]], ...] = (),
    ) -> Job:
        """The job, its first `outputs` fields (JobOutputs) and `events` after `job.created`, in one
        transaction: no reader, and no worker's claim, ever sees the job without them (the submit door's
        trust, queue and external-check flags), and the door commits once instead of four times."""
        job_id = job_id or uuid.uuid4().hex[:12]
        stored = JobOutputs.checked(outputs or {})
        mark_has_jobs(self.url)
        with self.session() as s, s.begin():
            row = JobRow(
                id=job_id,
                name=spec.name,
                owner=owner,
                state=JobState.PENDING.value,
                engine=spec.engine.name,
                base_model=spec.base_model,
                spec=spec.to_dict(),
                total_steps=spec.training.steps or 0,
                artifacts=stored,
                stages_done=[],
                last_seq=0,
            )
            s.add(row)
            s.flush()
            self._append(
                s,
                row,
                "job.created",
                {"name": spec.name, "engine": spec.engine.name, "base_model": spec.base_model},
                None,
            )
            for type_, data in events:
                self._append(s, row, type_, data, None)
        return self.get(job_id)

    @ride_out
    def get(self, job_id: str, owner: str | None = None) -> Job:
        with self.reader() as s:
            row = s.get(JobRow, job_id)
            if row is None or (owner is not None and row.owner != owner):
                raise NotFound(f"no job with id {job_id}", fix="list jobs with `loraflow jobs list`")
            return _job(row)

    @ride_out
    def find(self, prefix: str, owner: str | None = None) -> Job:
        """A job by id or unique id prefix, as people type them."""
        with self.reader() as s:
            query = select(JobRow).where(JobRow.id.startswith(prefix)).limit(2)
            if owner is not None:
                query = query.where(JobRow.owner == owner)
            rows = s.execute(query).scalars().all()
        if len(rows) != 1:
            what = "no job" if not rows else "more than one job"
            raise NotFound(f"{what} with id starting '{prefix}'", fix="give more of the id (`loraflow jobs list`)")
        return _job(rows[0])

    @ride_out
    def list_jobs(
        self, *, owner: str | None = None, states: list[str] | None = None, limit: int = 50, offset: int = 0
    ) -> list[Job]:
        query = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id).limit(limit).offset(offset)
        if owner is not None:
            query = query.where(JobRow.owner == owner)
        if states:
            query = query.where(JobRow.state.in_(states))
        with self.reader() as s:
            return [_job(r) for r in s.execute(query).scalars().all()]

    @ride_out
    def count_jobs(self, *, owner: str | None = None, states: list[str] | None = None) -> int:
        query = select(func.count()).select_from(JobRow)
        if owner is not None:
            query = query.where(JobRow.owner == owner)
        if states:
            query = query.where(JobRow.state.in_(states))
        with self.reader() as s:
            return int(s.execute(query).scalar_one())

    def _locked(self, s: Session, job_id: str) -> JobRow:
        row = s.execute(select(JobRow).where(JobRow.id == job_id).with_for_update()).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no job with id {job_id}")
        return row

    @ride_out
    def transition(
        self, job_id: str, new_state: JobState | str, *, data: dict[str, Any] | None = None, **fields: Any
    ) -> Job:
        """Change state (checked against the state machine) and record a job.state event atomically."""
        with self.session() as s, s.begin():
            row = self._locked(s, job_id)
            previous = row.state
            nxt = check_transition(previous, new_state)
            row.state = nxt.value
            if nxt is JobState.COMPLETED:  # an error from an earlier attempt no longer describes the job
                row.error = None
            for key, value in fields.items():
                setattr(row, key, value)
            self._append(s, row, "job.state", {"from": previous, "to": nxt.value, **(data or {})}, row.stage)
        return self.get(job_id)

    @ride_out
    def update(self, job_id: str, **fields: Any) -> Job:
        with self.session() as s, s.begin():
            row = self._locked(s, job_id)
            for key, value in fields.items():
                setattr(row, key, value)
        return self.get(job_id)

    @ride_out
    def mark_stage_done(self, job_id: str, stage: str) -> None:
        with self.session() as s, s.begin():
            row = self._locked(s, job_id)
            if stage not in (row.stages_done or []):
                row.stages_done = [*(row.stages_done or []), stage]
            self._append(s, row, "stage.completed", {"stage": stage}, stage)

    @ride_out
    def update_outputs(self, job_id: str, **fields: Any) -> None:
        """Set named `JobOutputs` fields (checked before the write lock is taken); the others are kept."""
        stored = JobOutputs.checked(fields)
        with self.session() as s, s.begin():
            row = self._locked(s, job_id)
            row.artifacts = {**(row.artifacts or {}), **stored}

    # --- events ------------------------------------------------------------------------------------

    @staticmethod
    def _append(s: Session, row: JobRow, type_: str, data: dict[str, Any], stage: str | None) -> EventRow:
        row.last_seq = (row.last_seq or 0) + 1
        ev = EventRow(job_id=row.id, seq=row.last_seq, type=type_, stage=stage, data=data)
        s.add(ev)
        return ev

    @ride_out
    def append_event(
        self, job_id: str, type_: str, data: dict[str, Any] | None = None, stage: str | None = None, **fields: Any
    ) -> Event:
        """Append one event; `fields` update the job row in the same transaction (progress, cost)."""
        with self.session() as s, s.begin():
            row = self._locked(s, job_id)
            for key, value in fields.items():
                setattr(row, key, value)
            ev = self._append(s, row, type_, data or {}, stage if stage is not None else row.stage)
            s.flush()
            return _event(ev)

    @ride_out
    def append_many(self, items: list[tuple[str, str, dict[str, Any], dict[str, Any]]]) -> None:
        """Append (job id, type, data, job fields) for many jobs in one transaction, in order: the
        follower writes a second's worth of events for hundreds of jobs at once."""
        if not items:
            return
        with self.session() as s, s.begin():
            rows: dict[str, JobRow] = {}
            for job_id in sorted({item[0] for item in items}):  # one lock order: no deadlocks between writers
                rows[job_id] = self._locked(s, job_id)
            for job_id, type_, data, fields in items:
                row = rows[job_id]
                for key, value in fields.items():
                    setattr(row, key, value)
                self._append(s, row, type_, data, row.stage)

    @ride_out
    def jobs_by_id(self, ids: list[str]) -> dict[str, Job]:
        if not ids:
            return {}
        with self.reader() as s:
            return {r.id: _job(r) for r in s.execute(select(JobRow).where(JobRow.id.in_(ids))).scalars().all()}

    @ride_out
    def events(
        self, job_id: str, after_seq: int = 0, limit: int = 1000, types: list[str] | None = None, latest: bool = False
    ) -> list[Event]:
        """Events in order after `after_seq`; with `latest`, only the newest one matching (an index lookup)."""
        order = EventRow.seq.desc() if latest else EventRow.seq
        query = (
            select(EventRow)
            .where(EventRow.job_id == job_id, EventRow.seq > after_seq)
            .order_by(order)
            .limit(1 if latest else limit)
        )
        if types:
            query = query.where(EventRow.type.in_(types))
        with self.reader() as s:
            return [_event(r) for r in s.execute(query).scalars().all()]
