"""The durable job queue, in the same database as everything else.

A job row is committed before the API answers 202. Workers claim a job with a lease (one atomic
UPDATE ... RETURNING; on PostgreSQL the candidate row is picked FOR UPDATE SKIP LOCKED) and keep it
with heartbeats. Every write a worker makes is fenced: it names the job, its own worker id and the
attempt it claimed, and only applies while that lease is the current one, so a worker that lost its
lease (expired, or the job was cancelled) cannot overwrite anything. Expired leases are put back on
the queue with exponential backoff, up to max_attempts. Results are stored in the same transaction
as the fenced status change, and circuits.job_id is unique: at-least-once execution, exactly one
stored circuit per job."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from sqlalchemy import and_, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from ..config import Settings
from ..problems import Conflict, NotFound, TooManyActiveJobs
from ..store.db import Database
from ..store.tables import ACTIVE, LEASED, TERMINAL, Job, JobEvent


@dataclass
class Lease:
    """What a worker holds while it runs a job: the fencing token for all its writes."""
    job_id: str
    worker_id: str
    attempt: int
    spec: dict


def _event(s, job: Job | None = None, *, job_id=None, kind: str, status: str, attempt: int, progress=None,
           message=None, at=None) -> None:
    s.add(JobEvent(job_id=job_id or job.id, at=at or time.time(), kind=kind, status=status, attempt=attempt,
                   progress=progress, message=message))


class Queue:
    def __init__(self, db: Database, settings: Settings):
        self.db, self.settings = db, settings

    # ------------------------------------------------------------------------------- submitting
    def enqueue(self, owner: str, spec: dict, *, model: str, revision: str | None, task: str, method: str,
                request_hash: str, idempotency_key: str | None = None, active_limit: int | None = None,
                callback_url: str | None = None) -> tuple[Job, bool]:
        """The new job (True), or the job an earlier request with the same idempotency key made (False)."""
        try:
            with self.db.write() as s:
                if not self.db.sqlite:  # serialize one owner's submissions so the active-job limit holds
                    s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:o))"), {"o": owner})
                if idempotency_key is not None:
                    prior = self._by_key(s, owner, idempotency_key, request_hash)
                    if prior is not None:
                        return prior, False
                if active_limit is not None:
                    active = s.scalar(select(func.count()).select_from(Job).where(
                        Job.owner == owner, Job.status.in_(ACTIVE)))
                    if active >= active_limit:
                        raise TooManyActiveJobs(
                            f"this token already has {active} active jobs (limit {active_limit}); wait for some to "
                            "finish or cancel them, then submit again")
                now = time.time()
                values = dict(id=str(uuid.uuid4()), owner=owner, idempotency_key=idempotency_key,
                              request_hash=request_hash, status="queued", model=model, revision=revision, task=task,
                              method=method, spec=spec, callback_url=callback_url, attempt=0,
                              max_attempts=self.settings.max_attempts, not_before=now, progress=0.0, created_at=now,
                              updated_at=now)
                # Core inserts: the submission path is the service's hottest, and the ORM's unit of work
                # costs more than the two inserts themselves; the returned Job is a detached copy.
                s.execute(insert(Job.__table__).values(**values))
                s.execute(insert(JobEvent.__table__).values(job_id=values["id"], at=now, kind="status",
                                                            status="queued", attempt=0))
            return Job(**values), True
        except IntegrityError:  # a concurrent request with the same key won the insert
            if idempotency_key is None:
                raise
            with self.db.read() as s:
                prior = self._by_key(s, owner, idempotency_key, request_hash)
            if prior is None:
                raise
            return prior, False

    @staticmethod
    def _by_key(s, owner: str, key: str, request_hash: str) -> Job | None:
        prior = s.scalar(select(Job).where(Job.owner == owner, Job.idempotency_key == key))
        if prior is not None and prior.request_hash != request_hash:
            raise Conflict(f"Idempotency-Key '{key}' was already used with a different request body (job "
                           f"{prior.id}); use a new key for a new request")
        return prior

    # ------------------------------------------------------------------------------- workers
    def claim(self, worker_id: str) -> Lease | None:
        now = time.time()
        pick = (select(Job.seq).where(Job.status == "queued", Job.not_before <= now)
                .order_by(Job.seq).limit(1).with_for_update(skip_locked=True).scalar_subquery())
        with self.db.write() as s:
            row = s.execute(
                update(Job).where(Job.seq == pick, Job.status == "queued")
                .values(status="running", attempt=Job.attempt + 1, lease_owner=worker_id,
                        lease_expires_at=now + self.settings.lease_s, started_at=func.coalesce(Job.started_at, now),
                        updated_at=now, progress=0.0, message=None, error=None)
                .returning(Job.id, Job.attempt, Job.spec)
                .execution_options(synchronize_session=False)).first()
            if row is None:
                return None
            _event(s, job_id=row.id, kind="status", status="running", attempt=row.attempt,
                   message=f"claimed by {worker_id}", at=now)
        return Lease(row.id, worker_id, row.attempt, row.spec)

    def _fenced(self, lease: Lease):
        return and_(Job.id == lease.job_id, Job.lease_owner == lease.worker_id, Job.attempt == lease.attempt,
                    Job.status.in_(LEASED))

    def heartbeat(self, lease: Lease, *, progress: float | None = None, message: str | None = None,
                  status: str | None = None) -> bool:
        """Extend the lease (and record progress); False: the lease is lost, stop working on the job."""
        now = time.time()
        values = {"lease_expires_at": now + self.settings.lease_s, "updated_at": now}
        if progress is not None:
            values["progress"] = progress
        if message is not None:
            values["message"] = message
        if status is not None:
            values["status"] = status
        with self.db.write() as s:
            n = s.execute(update(Job).where(self._fenced(lease)).values(**values)
                          .execution_options(synchronize_session=False)).rowcount
            if n and (progress is not None or message is not None or status is not None):
                _event(s, job_id=lease.job_id, kind="status" if status else "progress",
                       status=status or s.scalar(select(Job.status).where(Job.id == lease.job_id)),
                       attempt=lease.attempt, progress=progress, message=message, at=now)
        return bool(n)

    def complete(self, lease: Lease, store_result, warnings: list[str] | None = None) -> bool:
        """Mark the job succeeded and store its result, atomically; False (nothing written) if the
        lease is no longer this worker's. `store_result(session, job_id) -> circuit_id`; `warnings`, the
        circuit's result warnings, are kept with the job and each recorded as a `warning` event."""
        now = time.time()
        with self.db.write() as s:
            n = s.execute(update(Job).where(self._fenced(lease))
                          .values(status="succeeded", progress=1.0, finished_at=now, updated_at=now,
                                  lease_owner=None, lease_expires_at=None, message=None)
                          .execution_options(synchronize_session=False)).rowcount
            if not n:
                return False
            circuit_id = store_result(s, lease.job_id)
            s.execute(update(Job).where(Job.id == lease.job_id).values(circuit_id=circuit_id, warnings=warnings or None)
                      .execution_options(synchronize_session=False))
            for text in warnings or []:
                _event(s, job_id=lease.job_id, kind="warning", status="succeeded", attempt=lease.attempt,
                       progress=1.0, message=text, at=now)
            _event(s, job_id=lease.job_id, kind="status", status="succeeded", attempt=lease.attempt, progress=1.0,
                   message=f"circuit {circuit_id}", at=now)
        return True

    def fail(self, lease: Lease, error: str, *, retry: bool = False) -> bool:
        """The job failed: finally, or (retry, e.g. its worker died) back on the queue with backoff
        while attempts remain. Fenced like every worker write."""
        now = time.time()
        with self.db.write() as s:
            job = s.scalar(select(Job).where(self._fenced(lease)))
            if job is None:
                return False
            self._give_up_or_retry(s, job, error, retry=retry, now=now)
        return True

    def _give_up_or_retry(self, s, job: Job, error: str, *, retry: bool, now: float) -> None:
        if retry and job.attempt < job.max_attempts:
            delay = self.settings.backoff(job.attempt)
            job.status, job.not_before, job.lease_owner, job.lease_expires_at = "queued", now + delay, None, None
            job.message, job.updated_at = f"retrying in {delay:.1f}s: {error}", now
            _event(s, job, kind="retry", status="queued", attempt=job.attempt, message=job.message, at=now)
        else:
            job.status, job.error, job.finished_at, job.updated_at = "failed", error, now, now
            job.lease_owner, job.lease_expires_at = None, None
            _event(s, job, kind="status", status="failed", attempt=job.attempt, message=error, at=now)

    def reap(self) -> int:
        """Put jobs whose lease expired back on the queue (or fail them after max_attempts)."""
        now = time.time()
        with self.db.read() as s:
            expired = s.execute(select(Job.id).where(Job.status.in_(LEASED), Job.lease_expires_at < now)).all()
        count = 0
        for (job_id,) in expired:
            with self.db.write() as s:
                job = s.scalar(select(Job).where(Job.id == job_id, Job.status.in_(LEASED),
                                                 Job.lease_expires_at < now).with_for_update())
                if job is None:  # heartbeat came in, or another reaper got there first
                    continue
                self._give_up_or_retry(
                    s, job, f"the worker running attempt {job.attempt} stopped responding (lease expired)",
                    retry=True, now=now)
                if job.status == "failed":
                    job.error = (f"gave up after {job.attempt} attempts: each time the worker stopped responding "
                                 "(lease expired); the job may need more memory or time than a worker has")
                count += 1
        return count

    # ------------------------------------------------------------------------------- clients
    # Reads and changes for clients take `owner`: another owner's job is "not found" (None: any owner,
    # the admin scope and the service's own workers).
    @staticmethod
    def _mine(job_id: str, owner: str | None):
        return and_(Job.id == job_id, Job.owner == owner) if owner is not None else Job.id == job_id

    def cancel(self, job_id: str, owner: str | None = None) -> Job:
        now = time.time()
        with self.db.write() as s:
            job = s.scalar(select(Job).where(self._mine(job_id, owner)).with_for_update())
            if job is None:
                raise NotFound(f"no job with id '{job_id}'")
            if job.status in TERMINAL:
                raise Conflict(f"job {job_id} is already {job.status}; only queued or running jobs can be cancelled")
            # Clearing the lease fences off the worker: its heartbeat and result writes now match nothing.
            # cancelled_while_queued (not stored): no dispatcher will end an attempt of it, nor send its callback
            job.cancelled_while_queued = job.status == "queued"
            job.status, job.finished_at, job.updated_at = "cancelled", now, now
            job.lease_owner, job.lease_expires_at = None, None
            _event(s, job, kind="status", status="cancelled", attempt=job.attempt, message="cancelled by request",
                   at=now)
        return job

    def note(self, job_id: str, kind: str, message: str) -> None:
        """Record an event of the job outside any lease (e.g. its callback's delivery)."""
        with self.db.write() as s:
            job = s.scalar(select(Job).where(Job.id == job_id))
            if job is not None:
                _event(s, job, kind=kind, status=job.status, attempt=job.attempt, message=message)

    def get(self, job_id: str, owner: str | None = None) -> Job:
        with self.db.read() as s:
            job = s.scalar(select(Job).where(self._mine(job_id, owner)))
        if job is None:
            raise NotFound(f"no job with id '{job_id}'")
        return job

    def list(self, *, owner: str | None = None, status: str | None = None, model: str | None = None,
             task: str | None = None, before_seq: int | None = None, limit: int = 50) -> list[Job]:
        """Newest first; `before_seq` is the cursor (the last seq of the previous page)."""
        q = select(Job).order_by(Job.seq.desc()).limit(limit)
        if owner is not None:
            q = q.where(Job.owner == owner)
        if status:
            q = q.where(Job.status == status)
        if model:
            q = q.where(Job.model == model)
        if task:
            q = q.where(Job.task == task)
        if before_seq is not None:
            q = q.where(Job.seq < before_seq)
        with self.db.read() as s:
            return list(s.scalars(q))

    def events(self, job_id: str, after_id: int = 0) -> list[JobEvent]:
        with self.db.read() as s:
            return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after_id)
                                  .order_by(JobEvent.id)))

    def counts(self) -> dict[str, int]:
        with self.db.read() as s:
            return dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())


__all__ = ["Queue", "Lease"]
