"""Pydantic models of the API's responses: jobs, events, circuits, problems (the request bodies are
service/jobs/spec.py's, re-exported here)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..jobs.spec import JobRequest, JobStatus, LabelingSpec, MethodSpec, ModelSpec, SelectionSpec, TaskSpec

__all__ = ["JobRequest", "JobStatus", "LabelingSpec", "MethodSpec", "ModelSpec", "SelectionSpec", "TaskSpec", "Job",
           "JobList", "JobEvent", "JobEventList", "CircuitSummary", "CircuitList", "Problem", "Health"]


class Job(BaseModel):
    id: str
    status: JobStatus
    model: str
    revision: str | None
    task: str
    method: str
    attempt: int
    max_attempts: int
    progress: float
    message: str | None
    error: str | None
    circuit_id: str | None
    warnings: list[str] = Field(default_factory=list, description="the circuit's result warnings: the model does "
                                "not do the task, the behaviour is within noise, the faithfulness target was missed")
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    request: JobRequest


class JobList(BaseModel):
    items: list[Job]
    next_cursor: str | None = Field(None, description="pass as ?cursor= for the next page; null on the last page")


class JobEvent(BaseModel):
    id: int
    at: str
    kind: str
    status: JobStatus
    attempt: int
    progress: float | None
    message: str | None


class JobEventList(BaseModel):
    items: list[JobEvent]


class CircuitSummary(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    id: str
    job_id: str
    model: str
    revision: str | None
    model_type: str
    task: str
    task_hash: str
    method: str
    params: dict[str, Any]
    code_version: str
    n_edges: int
    n_nodes: int
    faithfulness: float | None
    labeled: bool
    artifact_sha256: str
    created_at: str


class CircuitList(BaseModel):
    items: list[CircuitSummary]
    next_cursor: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details."""
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class Health(BaseModel):
    """GET /healthz: "ok", or "unavailable" with the first failing part's reason; `checks` names every part
    (store_read, store_write, and dispatcher when this process runs one): "ok" or why it fails."""
    status: str
    reason: str | None = None
    checks: dict[str, str] = Field(default_factory=dict)
