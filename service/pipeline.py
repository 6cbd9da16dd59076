"""One job's work, independent of where it runs: load the model (kept in an LRU cache), build the
task, discover the circuit, and, when the job asks for a labeling backend, label it."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from discovery.errors import UserError

from .models_access import resolve_model

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


def model_key(spec: dict, device: str | None) -> tuple:
    m = spec["model"]
    return (m["name"], m.get("revision"), m.get("dtype"), device)


def load_for(spec: dict, roots: list[str], device: str | None):
    from discovery.models import load_model

    m = spec["model"]
    path = resolve_model(m["name"], roots)
    loaded = load_model(path, revision=m.get("revision"), dtype=m.get("dtype"), device=device)
    loaded.name = m["name"]  # record the name the user gave, not the server's directory
    return loaded


def build_task(spec: dict, model):
    t = spec["task"]
    if t.get("builtin"):
        from discovery.task_library import build_task as build
        return build(t["builtin"], tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=t["n"], seed=t["seed"])
    from discovery.tasks import task_from_rows
    return task_from_rows(t["rows"], tokenizer=model.tokenizer, vocab_size=model.vocab_size, name=t["name"])


def discover_circuit(spec: dict, model, task) -> str:
    from discovery.discover import discover

    m, sel = spec["method"], spec["selection"]
    circuit = discover(model, task, m["name"], metric=m.get("metric"), intervention=m["intervention"],
                       steps=m["steps"], batch_size=m["batch_size"], top_n=sel.get("top_n"),
                       threshold=sel.get("threshold"), greedy=sel.get("greedy"), absolute=sel["absolute"],
                       prune=sel["prune"], curve=m["curve"], progress=False, tau=m.get("tau"),
                       candidates=m.get("candidates"))
    return circuit.model_dump_json()


def label(spec: dict, circuit_json: str, model, task) -> JobResult:
    """The labeling step: labeling.label_circuit with the job's backend (imported only when asked for)."""
    backend = spec["labeling"]["backend"]
    try:
        from labeling import label_circuit
    except ImportError:
        raise UserError(f"labeling backend '{backend}' was requested but this server has no labeling "
                        "package; submit with labeling backend 'none'") from None
    from discovery.circuit import Circuit

    circuit = Circuit.model_validate_json(circuit_json)
    labeled = label_circuit(circuit, model, task, backend=backend, **spec["labeling"].get("options", {}))
    data = json.loads(labeled.model_dump_json())
    return JobResult(labeled.model_dump_json(), list(data.get("labels") or []))


def wants_labels(spec: dict) -> bool:
    return spec.get("labeling", {}).get("backend", "none") != "none"


def run_job(spec: dict, report: Report, cache: ModelCache, roots: list[str], device: str | None) -> JobResult:
    """The whole job in this process (the inline executor)."""
    report(0.05, "loading model")
    model = cache.get(model_key(spec, device), lambda: load_for(spec, roots, device))
    report(0.2, "building task")
    task = build_task(spec, model)
    report(0.3, f"discovering ({spec['method']['name']}, {len(task)} rows)")
    circuit_json = discover_circuit(spec, model, task)
    if not wants_labels(spec):
        return JobResult(circuit_json)
    report(0.8, f"labeling ({spec['labeling']['backend']})", status="labeling")
    return label(spec, circuit_json, model, task)
