"""The store's tables (SQLAlchemy 2). Times are epoch seconds (float): comparable the same way in
SQLite and PostgreSQL, with no time-zone conversions. The schema itself is created by the alembic
migrations in service/store/migrations; keep the two in step."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ACTIVE = ("queued", "running", "labeling")
LEASED = ("running", "labeling")  # states a worker holds with a lease
TERMINAL = ("succeeded", "failed", "cancelled")


def owned_circuit(circuit_id: str, owner: str | None):
    """SELECT the circuit with this id, if its job belongs to `owner` (None: any owner)."""
    from sqlalchemy import select

    q = select(CircuitRow).where(CircuitRow.id == circuit_id)
    return q if owner is None else q.join(Job, Job.id == CircuitRow.job_id).where(Job.owner == owner)


def iso(t: float | None) -> str | None:
    """A stored time as ISO 8601 text (UTC, milliseconds)."""
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


class Base(DeclarativeBase):
    pass


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the secret; the secret is never stored
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell tokens apart in listings
    max_active_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)  # sees and changes every owner's data
    # HMAC-SHA256 key of this token's job callbacks (shown once at creation, with the token)
    callback_secret: Mapped[str | None] = mapped_column(String(128), nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)  # order and cursors
    id: Mapped[str] = mapped_column(String(36), unique=True)
    owner: Mapped[str] = mapped_column(String(32))  # token id, or "-" when auth is off
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(512))
    revision: Mapped[str | None] = mapped_column(String(255), nullable=True)
    task: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict] = mapped_column(JSON)  # the validated request body
    callback_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # claims so far; part of the fencing token
    max_attempts: Mapped[int] = mapped_column(Integer)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    not_before: Mapped[float] = mapped_column(Float)  # retry backoff: not claimable before this
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    circuit_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    warnings: Mapped[list | None] = mapped_column(JSON, nullable=True)  # the circuit's result warnings
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_claim", "status", "not_before", "seq"),
        Index("ix_jobs_owner_status", "owner", "status"),
        Index("ix_jobs_lease", "status", "lease_expires_at"),
    )


class JobEvent(Base):
    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id"), index=True)
    at: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(16))  # status | progress | retry | error | callback
    status: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer)
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)


class Artifact(Base):
    """A circuit JSON document, stored once per content (sha256 of the uncompressed bytes)."""
    __tablename__ = "artifacts"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(64))
    encoding: Mapped[str] = mapped_column(String(16))  # "gzip"
    size: Mapped[int] = mapped_column(Integer)  # uncompressed bytes
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class CircuitRow(Base):
    __tablename__ = "circuits"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id"), unique=True)  # exactly one per job
    model: Mapped[str] = mapped_column(String(512))
    revision: Mapped[str | None] = mapped_column(String(255), nullable=True)
    model_type: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(255))
    task_hash: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSON)  # method params + selection
    code_version: Mapped[str] = mapped_column(String(128))
    n_edges: Mapped[int] = mapped_column(Integer)
    n_nodes: Mapped[int] = mapped_column(Integer)
    faithfulness: Mapped[float | None] = mapped_column(Float, nullable=True)
    labeled: Mapped[bool] = mapped_column(Boolean, default=False)
    artifact_sha256: Mapped[str] = mapped_column(String(64), ForeignKey("artifacts.sha256"))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_circuits_lookup", "model", "revision", "task", "method"),)


class CircuitNode(Base):
    """Every node of the circuit's graph, with its membership ("circuits where a5.h1 is in the circuit")."""
    __tablename__ = "circuit_nodes"
    circuit_id: Mapped[str] = mapped_column(String(36), ForeignKey("circuits.id"), primary_key=True)
    node: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    layer: Mapped[int | None] = mapped_column(Integer, nullable=True)
    head: Mapped[int | None] = mapped_column(Integer, nullable=True)
    in_circuit: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (Index("ix_circuit_nodes_node", "node", "in_circuit"),)


class CircuitEdge(Base):
    """The circuit's edges (in_circuit only: every edge's score is in the artifact)."""
    __tablename__ = "circuit_edges"
    circuit_id: Mapped[str] = mapped_column(String(36), ForeignKey("circuits.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(96), primary_key=True)
    source: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(32))
    slot: Mapped[str] = mapped_column(String(8))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_circuit_edges_source_target", "source", "target"),)


class Label(Base):
    __tablename__ = "labels"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    circuit_id: Mapped[str] = mapped_column(String(36), ForeignKey("circuits.id"), index=True)
    component: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(Text, nullable=True)
    role_tags: Mapped[list] = mapped_column(JSON)
    status: Mapped[str | None] = mapped_column(String(32), nullable=True)
    record: Mapped[dict] = mapped_column(JSON)  # the whole label record as the labeler wrote it


class Watch(Base):
    """A checkpoint source scanned on a schedule (service/watches/sources.py, service/watches/scheduler.py): each new
    complete checkpoint becomes one job per task, built from `template` (a job body without model/task)."""
    __tablename__ = "watches"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(36), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    owner: Mapped[str] = mapped_column(String(32))  # jobs are submitted as this owner (token id, or "-")
    source_kind: Mapped[str] = mapped_column(String(8))  # toy | dir | hub
    source: Mapped[str] = mapped_column(String(512))  # toy:NAME, a directory under a model root, or a hub repo id
    pattern: Mapped[str | None] = mapped_column(String(255), nullable=True)  # checkpoint names to take
    pattern_kind: Mapped[str] = mapped_column(String(8))  # glob | regex
    tasks: Mapped[list] = mapped_column(JSON)  # TaskSpec bodies
    template: Mapped[dict] = mapped_column(JSON)  # method, selection, labeling of every job
    interval_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    cron: Mapped[str | None] = mapped_column(String(128), nullable=True)
    quiet_s: Mapped[float] = mapped_column(Float)  # a directory checkpoint unchanged this long is complete
    marker: Mapped[str | None] = mapped_column(String(128), nullable=True)  # ... or complete when this file exists
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    next_run_at: Mapped[float] = mapped_column(Float)  # a scheduler claims a tick by moving this forward
    last_run_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)  # the last tick's listing error
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_watches_due", "enabled", "next_run_at"),)


class WatchCheckpoint(Base):
    """One (checkpoint, task) of a watch and the job submitted for it. Unique per watch, fingerprint
    and task, like the job's idempotency key: a restart or a second scheduler records it once."""
    __tablename__ = "watch_checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    watch_id: Mapped[str] = mapped_column(String(36), ForeignKey("watches.id", ondelete="CASCADE"), index=True)
    checkpoint: Mapped[str] = mapped_column(String(255))  # directory or ref name (step-001000, step1000)
    step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fingerprint: Mapped[str] = mapped_column(String(64))  # commit hash, or hash of the directory's files
    task: Mapped[str] = mapped_column(String(255))  # the task's label
    job_id: Mapped[str] = mapped_column(String(36), ForeignKey("jobs.id"))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("watch_id", "fingerprint", "task", name="uq_watch_checkpoints_key"),)
