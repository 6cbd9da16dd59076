"""Watches in the store, for the API and the CLI alike: create (validated with the same rules as
jobs), list, get with its checkpoints, remove, and the timeline of its circuits per task."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import delete, func, select

from discovery.core.errors import UserError
from discovery.io.timeline import timeline

from ..config import Settings
from ..problems import NotFound
from ..store.db import Database
from ..store.results import get_artifact
from ..store.tables import Job, Watch, WatchCheckpoint, iso, owned_circuit
from . import schemas as ws
from .scheduler import check_cron
from .sources import check_pattern, resolve_source


def create_watch(db: Database, settings: Settings, body: ws.WatchRequest, owner: str) -> Watch:
    """Store a new watch (its first scan is due at once). UserError: refused, with the reason."""
    from ..jobs.checks import validate_task  # the job API's own task checks (sizes, row shapes)

    kind, source = resolve_source(body.source, body.kind, settings.model_roots)
    check_pattern(body.pattern, body.pattern_kind)
    if body.cron:
        check_cron(body.cron)
    for task in body.tasks:
        validate_task(task, settings)
    if body.method.tau is not None and len(body.method.tau) > 1:
        raise UserError("a watch's jobs make one circuit each: give one method.tau")
    now = time.time()
    row = Watch(id=str(uuid.uuid4()), name=body.name or source, owner=owner, source_kind=kind, source=source,
                pattern=body.pattern, pattern_kind=body.pattern_kind,
                tasks=[t.model_dump(mode="json") for t in body.tasks],
                template={"method": body.method.model_dump(mode="json"),
                          "selection": body.selection.model_dump(mode="json"),
                          "labeling": body.labeling.model_dump(mode="json"), "dtype": body.dtype},
                interval_s=body.interval_s, cron=body.cron, quiet_s=body.quiet_s, marker=body.marker,
                enabled=body.enabled, next_run_at=now, created_at=now)
    with db.write() as s:
        s.add(row)
    return row


def _mine(watch_id: str, owner: str | None):
    """The watch with this id, if `owner` owns it (None: any owner); another owner's is not found."""
    q = select(Watch).where(Watch.id == watch_id)
    return q if owner is None else q.where(Watch.owner == owner)


def get_watch(db: Database, watch_id: str, owner: str | None = None) -> Watch:
    with db.read() as s:
        row = s.scalar(_mine(watch_id, owner))
    if row is None:
        raise NotFound(f"no watch with id '{watch_id}'")
    return row


def list_watches(db: Database, owner: str | None = None) -> list[Watch]:
    q = select(Watch).order_by(Watch.seq)
    with db.read() as s:
        return list(s.scalars(q if owner is None else q.where(Watch.owner == owner)))


def remove_watch(db: Database, watch_id: str, owner: str | None = None) -> Watch:
    """Stop scanning: the watch and its record go; its jobs and circuits stay."""
    with db.write() as s:
        row = s.scalar(_mine(watch_id, owner))
        if row is None:
            raise NotFound(f"no watch with id '{watch_id}'")
        s.execute(delete(WatchCheckpoint).where(WatchCheckpoint.watch_id == watch_id))
        s.delete(row)
    return row


def _order(step: int | None, name: str, at: float):
    return (step is None, step or 0, name, at)


def checkpoints(db: Database, watch_id: str) -> list[ws.WatchCheckpointView]:
    """The watch's (checkpoint, task) jobs with their status and error, in training order."""
    with db.read() as s:
        rows = s.execute(select(WatchCheckpoint, Job.status, Job.error, Job.circuit_id)
                         .join(Job, Job.id == WatchCheckpoint.job_id)
                         .where(WatchCheckpoint.watch_id == watch_id)).all()
    rows.sort(key=lambda r: _order(r[0].step, r[0].checkpoint, r[0].created_at))
    return [ws.WatchCheckpointView(checkpoint=c.checkpoint, step=c.step, fingerprint=c.fingerprint, task=c.task,
                                   job_id=c.job_id, status=status, error=error, circuit_id=circuit_id,
                                   submitted_at=iso(c.created_at)) for c, status, error, circuit_id in rows]


def watch_view(db: Database, row: Watch, *, with_checkpoints: bool = False) -> ws.Watch:
    with db.read() as s:
        counts = dict(s.execute(select(Job.status, func.count()).join(WatchCheckpoint, WatchCheckpoint.job_id == Job.id)
                                .where(WatchCheckpoint.watch_id == row.id).group_by(Job.status)).all())
    t = row.template
    return ws.Watch(
        id=row.id, name=row.name, source_kind=row.source_kind, source=row.source, pattern=row.pattern,
        pattern_kind=row.pattern_kind, tasks=row.tasks, method=t["method"], selection=t["selection"],
        labeling=t["labeling"], dtype=t.get("dtype"), interval_s=row.interval_s, cron=row.cron, quiet_s=row.quiet_s,
        marker=row.marker, enabled=row.enabled, next_run_at=iso(row.next_run_at), last_run_at=iso(row.last_run_at),
        last_error=row.last_error, created_at=iso(row.created_at), counts=counts,
        checkpoints=checkpoints(db, row.id) if with_checkpoints else None)


def load_circuit(db: Database, circuit_id: str, owner: str | None = None):
    """A stored circuit as a LabeledCircuit (plain circuits read as one with no labels)."""
    try:
        from labeling.schema import LabeledCircuit as Model
    except ImportError:  # a server without the labeling package: plain circuits
        from discovery.core.circuit import Circuit as Model
    with db.read() as s:
        row = s.scalar(owned_circuit(circuit_id, owner))
        digest = row.artifact_sha256 if row is not None else None
        content = get_artifact(s, digest) if digest else None
    if content is None:
        raise NotFound(f"no circuit with id '{circuit_id}'")
    return Model.model_validate_json(content)


def watch_timeline(db: Database, watch_id: str) -> ws.WatchTimeline:
    """For each task, every checkpoint scanned (with its job's status or error) and the circuits of
    the succeeded ones in training order, with size, faithfulness and components entered and left."""
    watch = get_watch(db, watch_id)
    rows = checkpoints(db, watch_id)
    tasks = []
    for label in [t.get("builtin") or t.get("name", "inline") for t in watch.tasks]:
        mine = [r for r in rows if r.task == label]
        latest = {}  # checkpoint name -> its newest succeeded circuit (a rewritten checkpoint runs again)
        for r in mine:
            if r.status == "succeeded" and r.circuit_id:
                latest[r.checkpoint] = r.circuit_id
        circuits = []
        for name, cid in latest.items():
            c = load_circuit(db, cid)
            # the checkpoint's name gives the step (a hub job loads a commit hash, whose digits are no step)
            circuits.append((cid, c.model_copy(update={"model": c.model.model_copy(update={"revision": name})})))
        tasks.append(ws.TaskTimeline(task=label, checkpoints=mine, points=timeline(circuits)))
    return ws.WatchTimeline(watch_id=watch.id, source=watch.source, tasks=tasks)


__all__ = ["create_watch", "get_watch", "list_watches", "remove_watch", "checkpoints", "watch_view", "load_circuit",
           "watch_timeline"]
