"""Pydantic models for every API body: the job request, jobs, events, circuits, problems."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator, model_validator

from discovery.discover import ACDC_METHODS
from discovery.methods import INTERVENTIONS, METHODS
from discovery.metrics import METRICS
from discovery.task_library import TASKS

MethodName = Literal[tuple(METHODS) + tuple(ACDC_METHODS)]  # type: ignore[valid-type]
MetricName = Literal[tuple(METRICS)]  # type: ignore[valid-type]
InterventionName = Literal[tuple(INTERVENTIONS)]  # type: ignore[valid-type]
TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]
JobStatus = Literal["queued", "running", "labeling", "succeeded", "failed", "cancelled"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSpec(_Strict):
    name: str = Field(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f]+$",
                      description="a hub id (org/name), a shipped toy model (toy:ioi), or a directory name under "
                                  "one of the configured model roots")
    revision: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$",
                                 description="hub revision (branch, tag, commit) or toy checkpoint")
    dtype: Literal["float32", "bfloat16", "float16"] | None = None


class TaskSpec(_Strict):
    """A built-in task (`builtin` with `n` and `seed`) or inline `rows` (text rows or token-id rows)."""
    builtin: TaskName | None = Field(None, description="built-in task name (see `circuitry tasks`)")
    n: int = Field(32, ge=1, description="rows of a built-in task")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    rows: list[dict[str, Any]] | None = Field(
        None, min_length=1, description="inline rows: {clean, corrupted, answer, wrong} or "
                                        "{clean_ids, corrupted_ids, answer_id, wrong_id}")
    name: str = Field("inline", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$",
                      description="name recorded for inline rows")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.builtin is None) == (self.rows is None):
            raise ValueError("give exactly one of 'builtin' (a built-in task name) or 'rows' (inline rows)")
        return self

    @property
    def label(self) -> str:
        return self.builtin or self.name


class MethodSpec(_Strict):
    name: MethodName = "eap-ig"
    metric: MetricName | None = Field(None, description="default: the built-in task's metric, else logit_diff")
    intervention: InterventionName = "patching"
    steps: int = Field(5, ge=1, le=256, description="interpolation steps (eap-ig, eap-ig-activations)")
    batch_size: int = Field(16, ge=1, le=4096)
    curve: bool = Field(False, description="also compute the faithfulness curve (CPR/CMD)")
    tau: float | None = Field(None, gt=0, le=1e6, description="acdc, eap-ig+acdc: remove an edge when the metric "
                                                               "moves by at most tau (default 0.01)")
    candidates: int | None = Field(None, ge=1, le=10_000_000, description="eap-ig+acdc: edges EAP-IG hands to ACDC "
                                                                          "(default 1000)")

    @model_validator(mode="after")
    def _acdc_only(self):
        if self.name not in ACDC_METHODS and (self.tau is not None or self.candidates is not None):
            raise ValueError(f"tau and candidates apply to {' and '.join(ACDC_METHODS)}, not to '{self.name}'")
        if self.name == "acdc" and self.candidates is not None:
            raise ValueError("candidates applies to eap-ig+acdc (plain acdc decides every edge)")
        return self


class SelectionSpec(_Strict):
    top_n: int | None = Field(None, ge=1, le=10_000_000)
    threshold: float | None = None
    greedy: int | None = Field(None, ge=1, le=10_000_000)
    absolute: bool = True
    prune: bool = True

    @field_validator("threshold")
    @classmethod
    def _finite(cls, v):
        if v is not None and not math.isfinite(v):
            raise ValueError("threshold must be a finite number")
        return v

    @model_validator(mode="after")
    def _at_most_one(self):
        if sum(x is not None for x in (self.top_n, self.threshold, self.greedy)) > 1:
            raise ValueError("give at most one of top_n, threshold, greedy (default: top_n 100)")
        return self


class LabelingSpec(_Strict):
    backend: str = Field("none", min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$",
                         description="'none' (no labels), or a labeling backend such as 'heuristic'")
    options: dict[str, Any] = Field(default_factory=dict)


class JobRequest(_Strict):
    model: ModelSpec
    task: TaskSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    labeling: LabelingSpec = Field(default_factory=LabelingSpec)
    callback_url: HttpUrl | None = Field(None, description="POSTed the job when it finishes")

    @model_validator(mode="after")
    def _acdc_selects_itself(self):
        s = self.selection
        if self.method.name in ACDC_METHODS and any(x is not None for x in (s.top_n, s.threshold, s.greedy)):
            raise ValueError(f"{self.method.name} decides the circuit itself by method.tau; drop selection "
                             "top_n/threshold/greedy")
        return self


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
