"""One job's work, independent of where it runs: load the model (kept in an LRU cache), build the
task, discover the circuit, and, when the job asks for a labeling backend, label it."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from discovery.core.errors import UserError

from .models_access import resolve_model
from .spec import JobRequest

# report(progress, message, status=None): records progress; raises LeaseLost when the job was taken away
Report = Callable[..., None]


class LeaseLost(Exception):
    """The job was cancelled or its lease expired: stop, write nothing."""


class RetryableError(Exception):
    """The job failed for a reason outside it (its worker died): run it again."""


@dataclass
class JobResult:
    circuit_json: str
    labels: list[dict] | None = None


class ModelCache:
    """Loaded models keyed by (model, revision, dtype, device); the least recently used is dropped
    when more than `capacity` are loaded, so a stream of jobs on one model loads it once."""

    def __init__(self, capacity: int = 2):
        self.capacity = max(1, capacity)
        self._models: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def get(self, key: tuple, load: Callable):
        with self._lock:  # one load at a time: two jobs on a new model must not both load it
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            model = load()
            self.loads += 1
            self._models[key] = model
            while len(self._models) > self.capacity:
                self._models.popitem(last=False)
            return model


def model_key(job: JobRequest, device: str | None) -> tuple:
    m = job.model
    return (m.name, m.revision, m.dtype, device)


def load_for(job: JobRequest, roots: list[str], device: str | None):
    from discovery.model.adapters import load_model

    m = job.model
    path = resolve_model(m.name, roots)
    loaded = load_model(path, revision=m.revision, dtype=m.dtype, device=device)
    loaded.name = m.name  # record the name the user gave, not the server's directory
    return loaded


def build_task(job: JobRequest, model):
    t = job.task
    if t.builtin:
        from discovery.task_library import build_task as build
        return build(t.builtin, tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=t.n, seed=t.seed)
    from discovery.model.tasks import task_from_rows
    return task_from_rows(t.rows, tokenizer=model.tokenizer, vocab_size=model.vocab_size, name=t.name)


def discover_circuit(job: JobRequest, model, task, on_batch=None) -> str:
    from discovery.pipeline.discover import discover

    circuit = discover(model, task, options=job.options, progress=False, on_batch=on_batch)
    return circuit.model_dump_json()


def label(job: JobRequest, circuit_json: str, model, task) -> JobResult:
    """The labeling step: labeling.label_circuit with the job's backend (imported only when asked for)."""
    backend = job.labeling.backend
    try:
        from labeling import label_circuit
    except ImportError:
        raise UserError(f"labeling backend '{backend}' was requested but this server has no labeling "
                        "package; submit with labeling backend 'none'") from None
    from discovery.core.circuit import Circuit

    circuit = Circuit.model_validate_json(circuit_json)
    labeled = label_circuit(circuit, model, task, backend=backend, **job.labeling.options.model_dump())
    data = json.loads(labeled.model_dump_json())
    return JobResult(labeled.model_dump_json(), list(data.get("labels") or []))


def run_job(job: JobRequest, report: Report, cache: ModelCache, roots: list[str], device: str | None) -> JobResult:
    """The whole job in this process (the inline executor)."""
    report(0.05, "loading model")
    model = cache.get(model_key(job, device), lambda: load_for(job, roots, device))
    report(0.2, "building task")
    task = build_task(job, model)
    report(0.3, f"discovering ({job.method.name}, {len(task)} rows)")
    circuit_json = discover_circuit(job, model, task, on_batch=BatchProgress(report, 0.3, 0.8))
    if not job.labeling.wanted:
        return JobResult(circuit_json)
    report(0.8, f"labeling ({job.labeling.backend})", status="labeling")
    return label(job, circuit_json, model, task)


class BatchProgress:
    """A Setup.on_batch callback that turns the methods' batches into job progress between `lo` and
    `hi`: each pass (scoring, ACDC's rounds, evaluations) moves a share of what is left, so progress
    only grows; at most one report per `every_s` (each is a database write). `report` raises
    LeaseLost when the job was cancelled: the run stops within one batch."""

    def __init__(self, report: Report, lo: float, hi: float, every_s: float = 0.5, clock=time.monotonic):
        self.report, self.lo, self.hi, self.every_s, self.clock = report, lo, hi, every_s, clock
        self.base, self.progress, self.last, self.pass_key = lo, lo, -1e9, None

    def __call__(self, done: int, total: int, desc: str | None) -> None:
        if (desc, total) != self.pass_key or done == 0:
            self.base, self.pass_key = self.progress, (desc, total)
        share = (self.hi - self.base) * (0.5 if desc else 0.2)  # a pass moves part of what is left
        self.progress = max(self.progress, self.base + share * (done / max(1, total)))
        now = self.clock()
        if now - self.last >= self.every_s:
            self.last = now
            what = desc or "evaluating"
            self.report(round(self.progress, 4), f"{what}: batch {done}/{total}")
