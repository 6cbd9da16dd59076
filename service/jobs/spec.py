"""A job as it is submitted, stored and run: the model, the task and the discovery options
(discovery/pipeline/options.py's DiscoveryOptions, which JobRequest extends). The API, watches, the queue and
the executors all pass this one model."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, HttpUrl, model_validator

from discovery.core.names import TASK_NAMES
from discovery.pipeline.options import (DEFAULT_BUILTIN_ROWS, DiscoveryOptions, LabelingOptions, MethodOptions, Rows, Seed,
                               SelectionOptions, Strict)

TaskName = Literal[TASK_NAMES]  # type: ignore[valid-type]
JobStatus = Literal["queued", "running", "labeling", "succeeded", "failed", "cancelled"]
# the job body's groups are discovery/pipeline/options.py's: one set of bounds and defaults for CLI, API and watches
MethodSpec, SelectionSpec, LabelingSpec = MethodOptions, SelectionOptions, LabelingOptions


class ModelSpec(Strict):
    name: str = Field(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f]+$",
                      description="a hub id (org/name), a shipped toy model (toy:ioi), or a directory name under "
                                  "one of the configured model roots")
    revision: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^\x00-\x1f]+$",
                                 description="hub revision (branch, tag, commit) or toy checkpoint")
    dtype: Literal["float32", "bfloat16", "float16"] | None = None


class TaskSpec(Strict):
    """A built-in task (`builtin` with `n` and `seed`) or inline `rows` (text rows or token-id rows)."""
    builtin: TaskName | None = Field(None, description="built-in task name (see `circuitry tasks`)")
    n: Rows = DEFAULT_BUILTIN_ROWS
    seed: Seed = 0
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


class JobRequest(DiscoveryOptions):
    """A job: the model, the task, and the discovery options (discovery/pipeline/options.py's DiscoveryOptions)."""
    model: ModelSpec
    task: TaskSpec
    callback_url: HttpUrl | None = Field(None, description="POSTed the job when it finishes (signed; see docs)")

    @model_validator(mode="after")
    def _one_circuit(self):
        if self.method.tau is not None and len(self.method.tau) > 1:
            raise ValueError("a job makes one circuit: give one method.tau (submit one job per tau)")
        return self

    @property
    def options(self) -> DiscoveryOptions:
        return DiscoveryOptions(method=self.method, selection=self.selection, labeling=self.labeling)


