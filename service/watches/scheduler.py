"""The scan scheduler: at each watch's tick (an interval or a cron expression, UTC), list its
checkpoints and queue one job per new (checkpoint, task).

Exactly-once submission does not depend on timing. Every job is queued through Queue.enqueue (the
API's path) with the idempotency key `watch:{id}:{fingerprint}:{task}`, which the jobs table holds
unique per owner; and the watch's record of it, watch_checkpoints, is unique on (watch, fingerprint,
task). Two schedulers ticking the same watch at once, or a scheduler restarted between queueing a job
and recording it, get the one job back. Claiming a tick (moving next_run_at forward with a
compare-and-set) only saves the duplicate work of listing twice.

A checkpoint whose model fails to load fails its own job, with the error, like any job; the other
checkpoints' jobs are unaffected. A source that cannot be listed (hub unreachable, directory gone) is
recorded as the watch's last_error and tried again at the next tick."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from sqlalchemy import select, update

from discovery.core.errors import UserError

from ..background import BackgroundLoop
from ..config import Settings
from ..jobs.models_access import resolve_model
from ..jobs.queue import Queue
from ..jobs.spec import JobRequest
from ..problems import TooManyActiveJobs
from ..store.db import Database
from ..store.tables import ApiToken, Watch, WatchCheckpoint
from .sources import Checkpoint, list_checkpoints

log = logging.getLogger("circuitry.scheduler")
DEFERRED_RETRY_S = 60.0  # a tick cut short by the owner's active-job limit is tried again this soon


def next_run(watch, after: float) -> float:
    """The watch's next tick after `after` (epoch seconds): interval, or the cron expression in UTC."""
    if watch.cron:
        from cronsim import CronSim

        return next(CronSim(watch.cron, datetime.fromtimestamp(after, timezone.utc))).timestamp()
    return after + float(watch.interval_s)


def check_cron(expr: str) -> None:
    """A cron expression of exactly five fields (minute hour day month weekday, UTC); the cron library
    would read a sixth leading field as seconds."""
    from cronsim import CronSim, CronSimError

    if len(expr.split()) != 5:
        raise UserError(f"cron expression '{expr}' has {len(expr.split())} fields; give five: minute hour day month "
                        "weekday, e.g. '*/30 * * * *'")

    try:
        next(CronSim(expr, datetime.now(timezone.utc)))
    except (CronSimError, StopIteration, ValueError) as exc:
        raise UserError(f"cron expression '{expr}' is not valid ({exc}); five fields: minute hour day month "
                        "weekday, e.g. '*/30 * * * *'") from None


def job_key(watch_id: str, fingerprint: str, task: str) -> str:
    return f"watch:{watch_id}:{fingerprint}:{task}"


def job_spec(watch: Watch, checkpoint: Checkpoint, task: dict) -> JobRequest:
    t = watch.template
    return JobRequest.model_validate({
        "model": {"name": checkpoint.model, "revision": checkpoint.revision, "dtype": t.get("dtype")},
        "task": task, "method": t["method"], "selection": t["selection"], "labeling": t["labeling"]})


@dataclass
class Submitted:
    checkpoint: str
    task: str
    job_id: str
    created: bool  # False: the job already existed (an earlier tick, or another scheduler)


@dataclass
class TickReport:
    watch_id: str
    ready: int = 0  # complete checkpoints matching the pattern
    submitted: list[Submitted] = field(default_factory=list)  # new to the watch's record this tick
    waiting: list[dict] = field(default_factory=list)  # {checkpoint, reason}: not taken yet
    skipped: list[dict] = field(default_factory=list)  # {checkpoint, reason}: refused (model rules)
    deferred: bool = False  # stopped early: the owner has too many active jobs
    error: str | None = None  # the source could not be listed

    def as_dict(self) -> dict:
        return asdict(self)


def tick(db: Database, queue: Queue, settings: Settings, watch: Watch, *, now: float | None = None) -> TickReport:
    """One scan of `watch`: list, then queue what is new. Safe to run concurrently with itself."""
    now = time.time() if now is None else now
    report = TickReport(watch.id)
    try:
        listing = list_checkpoints(watch, settings.model_roots, now=now)
    except Exception as exc:  # hub unreachable, directory removed: the watch says so, the next tick retries
        report.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:2000]
        log.warning("watch %s: listing %s failed: %s", watch.id, watch.source, report.error)
        _finish(db, watch.id, now, report.error)
        return report
    report.ready = len(listing.ready)
    report.waiting = [{"checkpoint": n, "reason": why} for n, why in listing.waiting]
    with db.read() as s:
        done = set(s.execute(select(WatchCheckpoint.fingerprint, WatchCheckpoint.task)
                             .where(WatchCheckpoint.watch_id == watch.id)).all())
    try:
        for cp in listing.ready:
            for task in watch.tasks:
                label = task.get("builtin") or task.get("name", "inline")
                if (cp.fingerprint, label) in done:
                    continue
                try:
                    resolve_model(cp.model, settings.model_roots)  # the jobs' own model rules, checked again
                except UserError as exc:
                    report.skipped.append({"checkpoint": cp.name, "reason": str(exc)})
                    break
                report.submitted.append(submit(db, queue, settings, watch, cp, task, label, now=now))
    except TooManyActiveJobs as exc:
        report.deferred = True
        log.info("watch %s: %s; the rest waits for the next tick", watch.id, exc.detail)
    error = None
    if report.skipped and not report.submitted:  # nothing of it can run: the watch says why, not "no jobs yet"
        error = (f"{len(report.skipped)} of {report.ready} checkpoints refused, none queued; e.g. "
                 f"{report.skipped[0]['checkpoint']}: {report.skipped[0]['reason']}")[:2000]
        report.error = error
    _finish(db, watch.id, now, error, retry_by=now + DEFERRED_RETRY_S if report.deferred else None)
    return report


def submit(db: Database, queue: Queue, settings: Settings, watch: Watch, cp: Checkpoint, task: dict, label: str,
           *, now: float) -> Submitted:
    body = job_spec(watch, cp, task)
    spec = body.model_dump(mode="json")  # the same canonical body, hence request hash, every time
    request_hash = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    job, created = queue.enqueue(
        watch.owner, spec, model=body.model.name, revision=body.model.revision, task=body.task.label,
        method=body.method.name, request_hash=request_hash, idempotency_key=job_key(watch.id, cp.fingerprint, label),
        active_limit=_active_limit(db, settings, watch.owner))
    with db.write() as s:
        dialect = s.get_bind().dialect.name
        values = dict(watch_id=watch.id, checkpoint=cp.name, step=cp.step, fingerprint=cp.fingerprint, task=label,
                      job_id=job.id, created_at=now)
        if dialect in ("sqlite", "postgresql"):  # the other scheduler recorded it first: keep its row
            mod = __import__(f"sqlalchemy.dialects.{dialect}", fromlist=["insert"])
            s.execute(mod.insert(WatchCheckpoint).values(**values).on_conflict_do_nothing())
        elif s.scalar(select(WatchCheckpoint.id).where(WatchCheckpoint.watch_id == watch.id,
                                                       WatchCheckpoint.fingerprint == cp.fingerprint,
                                                       WatchCheckpoint.task == label)) is None:
            s.add(WatchCheckpoint(**values))
    return Submitted(cp.name, label, job.id, created)


def _active_limit(db: Database, settings: Settings, owner: str) -> int:
    """The owner's active-job limit, as the API applies it: the token's own, else the server's."""
    if owner.isdigit():
        with db.read() as s:
            own = s.scalar(select(ApiToken.max_active_jobs).where(ApiToken.id == int(owner)))
        if own:
            return own
    return settings.max_active_jobs


def _finish(db: Database, watch_id: str, now: float, error: str | None, retry_by: float | None = None) -> None:
    with db.write() as s:
        values = {"last_run_at": now, "last_error": error}
        s.execute(update(Watch).where(Watch.id == watch_id).values(**values)
                  .execution_options(synchronize_session=False))
        if retry_by is not None:
            s.execute(update(Watch).where(Watch.id == watch_id, Watch.next_run_at > retry_by)
                      .values(next_run_at=retry_by).execution_options(synchronize_session=False))


class Scheduler(BackgroundLoop):
    """Ticks due watches in a background thread (inside `circuitry serve`, or alone with
    `circuitry scan scheduler`). Any number may run against one database."""

    thread_name = "circuitry-scheduler"

    def __init__(self, db: Database, settings: Settings, queue: Queue | None = None, *, poll_s: float | None = None):
        super().__init__()
        self.db, self.settings = db, settings
        self.queue = queue or Queue(db, settings)
        self.poll_s = poll_s if poll_s is not None else float(os.environ.get("CIRCUITRY_SCAN_POLL_S") or 5.0)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due()
            except Exception:  # the database was briefly unavailable: keep going
                log.exception("scheduler loop error")
            self._stop.wait(self.poll_s)

    def run_due(self, now: float | None = None) -> list[TickReport]:
        """Tick every enabled watch whose time has come and that this scheduler claims first."""
        now = time.time() if now is None else now
        with self.db.read() as s:
            due = list(s.scalars(select(Watch).where(Watch.enabled.is_(True), Watch.next_run_at <= now)
                                 .order_by(Watch.next_run_at)))
        reports = []
        for watch in due:
            if self._stop.is_set():
                break
            if self.claim(watch, now):
                reports.append(tick(self.db, self.queue, self.settings, watch, now=now))
        return reports

    def claim(self, watch: Watch, now: float) -> bool:
        """Compare-and-set next_run_at: of several schedulers, one ticks this occurrence."""
        try:
            following = next_run(watch, now)
        except Exception as exc:  # an expression the cron library no longer accepts: the watch says why
            _finish(self.db, watch.id, now, f"schedule: {exc}")
            following = now + 3600.0
        with self.db.write() as s:
            return bool(s.execute(update(Watch).where(Watch.id == watch.id, Watch.next_run_at == watch.next_run_at)
                                  .values(next_run_at=following).execution_options(synchronize_session=False))
                        .rowcount)


__all__ = ["Scheduler", "TickReport", "Submitted", "tick", "submit", "next_run", "check_cron", "job_key", "job_spec"]
