"""Store rows as API bodies."""

from __future__ import annotations

from ..store.tables import CircuitRow, Job, JobEvent, iso
from . import schemas


def job_view(j: Job, request: schemas.JobRequest | None = None) -> schemas.Job:
    """The API's view of a job row; `request`: the row's request when the caller has it validated already."""
    return schemas.Job.model_construct(
        id=j.id, status=j.status, model=j.model, revision=j.revision, task=j.task, method=j.method,
        attempt=j.attempt, max_attempts=j.max_attempts, progress=j.progress, message=j.message, error=j.error,
        circuit_id=j.circuit_id, warnings=list(j.warnings or []), created_at=iso(j.created_at), updated_at=iso(j.updated_at),
        started_at=iso(j.started_at), finished_at=iso(j.finished_at),
        request=request if request is not None else schemas.JobRequest.model_validate(j.spec))


def event_view(e: JobEvent) -> schemas.JobEvent:
    return schemas.JobEvent(id=e.id, at=iso(e.at), kind=e.kind, status=e.status, attempt=e.attempt,
                            progress=e.progress, message=e.message)


def circuit_view(c: CircuitRow) -> schemas.CircuitSummary:
    return schemas.CircuitSummary(
        id=c.id, job_id=c.job_id, model=c.model, revision=c.revision, model_type=c.model_type, task=c.task,
        task_hash=c.task_hash, method=c.method, params=c.params, code_version=c.code_version, n_edges=c.n_edges,
        n_nodes=c.n_nodes, faithfulness=c.faithfulness, labeled=c.labeled, artifact_sha256=c.artifact_sha256,
        created_at=iso(c.created_at))
