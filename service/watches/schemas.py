"""Pydantic bodies of the watch API: a watch request, a watch, its checkpoints, a tick's report and
a watch's timeline."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from discovery.pipeline.options import DiscoveryOptions
from discovery.io.timeline import TimelinePoint

from ..jobs.spec import JobStatus, LabelingSpec, MethodSpec, SelectionSpec, TaskSpec

_NAME = r"^[^\x00-\x1f]+$"


class WatchRequest(DiscoveryOptions):
    """A checkpoint source, the jobs to run on each new checkpoint (the discovery options of
    discovery/pipeline/options.py, the same as a job's), and a schedule (exactly one of `interval_s` and `cron`)."""
    source: str = Field(min_length=1, max_length=512, pattern=_NAME,
                        description="toy:NAME (a toy model's checkpoints), a directory under a model root whose "
                                    "subdirectories are checkpoints, or a hub repository id (its branches and tags)")
    kind: Literal["auto", "toy", "dir", "hub"] = Field("auto", description="auto: toy:NAME is toy, a directory "
                                                                          "under a model root is dir, else hub")
    name: str | None = Field(None, min_length=1, max_length=200, pattern=_NAME)
    pattern: str | None = Field(None, min_length=1, max_length=255, pattern=_NAME,
                                description="checkpoint names to take, e.g. step* (glob) or step\\d+ (regex)")
    pattern_kind: Literal["glob", "regex"] = "glob"
    tasks: list[TaskSpec] = Field(min_length=1, max_length=32, description="one job per task per checkpoint")
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    interval_s: float | None = Field(None, ge=1, le=366 * 86400, description="scan every this many seconds")
    cron: str | None = Field(None, min_length=9, max_length=128, pattern=_NAME,
                             description="scan on this cron schedule (UTC), e.g. '*/30 * * * *'")
    quiet_s: float = Field(60.0, ge=0, le=7 * 86400, description="a directory checkpoint is complete once its "
                                                                   "config and weights are unchanged this long")
    marker: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$",
                               description="... or at once when this file exists in it (e.g. COMPLETE)")
    enabled: bool = True

    @model_validator(mode="after")
    def _one_schedule(self):
        if (self.interval_s is None) == (self.cron is None):
            raise ValueError("give exactly one schedule: 'interval_s' (seconds) or 'cron' (five fields, UTC)")
        labels = [t.label for t in self.tasks]
        if len(set(labels)) != len(labels):
            raise ValueError("tasks must have distinct names (a builtin name, or 'name' for inline rows)")
        return self


class WatchCheckpointView(BaseModel):
    checkpoint: str
    step: int | None
    fingerprint: str
    task: str
    job_id: str
    status: JobStatus
    error: str | None = Field(None, description="why the job failed (e.g. the checkpoint did not load)")
    circuit_id: str | None
    submitted_at: str


class Watch(BaseModel):
    id: str
    name: str
    source_kind: Literal["toy", "dir", "hub"]
    source: str
    pattern: str | None
    pattern_kind: str
    tasks: list[TaskSpec]
    method: MethodSpec
    selection: SelectionSpec
    labeling: LabelingSpec
    dtype: str | None
    interval_s: float | None
    cron: str | None
    quiet_s: float
    marker: str | None
    enabled: bool
    next_run_at: str
    last_run_at: str | None
    last_error: str | None = Field(None, description="why the last scan could not list the source")
    created_at: str
    counts: dict[str, int] = Field(default_factory=dict, description="the watch's jobs by status")
    checkpoints: list[WatchCheckpointView] | None = Field(None, description="in training order (GET one watch)")


class WatchList(BaseModel):
    items: list[Watch]


class SubmittedView(BaseModel):
    checkpoint: str
    task: str
    job_id: str
    created: bool


class TickReport(BaseModel):
    watch_id: str
    ready: int = Field(description="complete checkpoints matching the pattern")
    submitted: list[SubmittedView] = Field(description="(checkpoint, task) pairs queued by this scan")
    waiting: list[dict[str, str]] = Field(description="checkpoints not taken yet (still being written) and why")
    skipped: list[dict[str, str]]
    deferred: bool = Field(description="the owner's active-job limit cut the scan short; the rest is queued later")
    error: str | None = Field(description="the source could not be listed")


class TaskTimeline(BaseModel):
    task: str
    checkpoints: list[WatchCheckpointView] = Field(description="every checkpoint scanned, in training order")
    points: list[TimelinePoint] = Field(description="the circuits of the succeeded checkpoints, in training order")


class WatchTimeline(BaseModel):
    watch_id: str
    source: str
    tasks: list[TaskTimeline]
