"""The discovery pipeline: score edges, select a circuit, evaluate it, package it as a Circuit."""

from __future__ import annotations

import math
import resource
import sys
import time

import numpy as np
import torch

from .circuit import (Circuit, CurvePoint, MethodInfo, Metrics, ModelInfo, SelectionInfo, TaskInfo, build_edges,
                      build_nodes, code_version)
from .errors import UserError
from .evaluation import evaluate_circuit, faithfulness_curves
from .methods import Setup, score_edges
from .metrics import get_metric
from .models import LoadedModel
from .selection import greedy, nodes_in_circuit, prune, threshold, top_n
from .tasks import Task


def _clean(x):
    return None if isinstance(x, float) and (math.isnan(x) or math.isinf(x)) else x


def peak_memory_bytes(device) -> int:
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return int(rss_kb * (1 if sys.platform == "darwin" else 1024))


def model_info(model: LoadedModel) -> ModelInfo:
    a = model.adapter
    return ModelInfo(name=model.name, revision=model.revision, architecture=model.architecture,
                     model_type=model.config.model_type, config_hash=model.config_hash(), n_layers=a.n_layers,
                     n_heads=a.n_heads, n_kv_heads=a.n_kv_heads, parallel_residual=a.parallel,
                     dtype=str(a.dtype).replace("torch.", ""))


def select(setup: Setup, scores, *, top: int | None = None, thresh: float | None = None,
           grow: int | None = None, absolute: bool = True, do_prune: bool = True):
    chosen = [x is not None for x in (top, thresh, grow)]
    if sum(chosen) > 1:
        raise UserError("give only one of --top-n, --threshold, --greedy")
    graph, hib = setup.graph, setup.metric.higher_is_better
    if thresh is not None:
        keep, info = threshold(graph, scores, thresh, higher_is_better=hib, absolute=absolute), ("threshold", thresh)
    elif grow is not None:
        keep, info = greedy(graph, scores, grow, higher_is_better=hib, absolute=absolute), ("greedy", grow)
    else:
        n = 100 if top is None else top
        keep, info = top_n(graph, scores, n, higher_is_better=hib, absolute=absolute), ("top-n", n)
    if do_prune:
        keep = prune(graph, keep)
    return keep, SelectionInfo(kind=info[0], value=info[1], absolute=absolute, pruned=do_prune)


def discover(model: LoadedModel, task: Task, method: str = "eap-ig", *, metric: str | None = None,
             intervention: str = "patching", steps: int = 5, batch_size: int = 16, top_n: int | None = None,
             threshold: float | None = None, greedy: int | None = None, absolute: bool = True,
             prune: bool = True, curve: bool = True, progress: bool = False) -> Circuit:
    """Find a circuit: scores for every edge, the selected circuit, its faithfulness (and curve).
    The metric defaults to the task's own (built-in tasks), else logit_diff."""
    started = time.perf_counter()
    metric = metric or task.metric or "logit_diff"
    if torch.device(model.adapter.device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.adapter.device)
    setup = Setup(model, task, get_metric(metric), batch_size=batch_size, intervention=intervention,
                  progress=progress)
    scores = score_edges(setup, method, steps=steps).numpy()
    keep, selection = select(setup, scores, top=top_n, thresh=threshold, grow=greedy, absolute=absolute,
                             do_prune=prune)
    result = evaluate_circuit(setup, keep)
    nodes = nodes_in_circuit(setup.graph, keep)
    metrics = Metrics(metric=metric, clean=_clean(result["clean"]), corrupted=_clean(result["corrupted"]),
                      circuit=_clean(result["circuit"]), faithfulness=_clean(result["faithfulness"]),
                      n_edges=int(keep.sum()), n_nodes=len(nodes))
    if curve:
        c = faithfulness_curves(setup, scores, prune=prune)
        for key in ("curve_signed", "curve_absolute"):
            setattr(metrics, key, [CurvePoint(**dict(p, faithfulness=_clean(p["faithfulness"]))) for p in c[key]])
        metrics.cpr, metrics.cmd = _clean(c["cpr"]), _clean(c["cmd"])
    params = {"metric": metric, "intervention": intervention, "batch_size": batch_size}
    if method in ("eap-ig", "eap-ig-activations"):
        params["steps"] = steps
    return Circuit(
        model=model_info(model),
        task=TaskInfo(name=task.name, source=task.source, rows=len(task), content_hash=task.content_hash),
        method=MethodInfo(name=method, params=params), selection=selection,
        nodes=build_nodes(setup.graph, nodes), edges=build_edges(setup.graph, scores, keep), metrics=metrics,
        wall_time_s=round(time.perf_counter() - started, 3), peak_memory_bytes=peak_memory_bytes(model.adapter.device),
        device=str(model.adapter.device), code_version=code_version())


def evaluate(model: LoadedModel, task: Task, circuit: Circuit, *, metric: str | None = None,
             intervention: str | None = None, batch_size: int = 16, progress: bool = False) -> dict:
    """Evaluate exactly the edges marked in_circuit in `circuit` (metric/intervention default to the file's)."""
    params = circuit.method.params
    setup = Setup(model, task, get_metric(metric or params.get("metric", "logit_diff")), batch_size=batch_size,
                  intervention=intervention or params.get("intervention", "patching"), progress=progress)
    keep = circuit.in_circuit(setup.graph)
    out = evaluate_circuit(setup, keep)
    out["metric"] = setup.metric.name
    out["intervention"] = setup.intervention
    out["same_task"] = task.content_hash == circuit.task.content_hash  # held-out tasks are legitimate
    return {k: _clean(v) for k, v in out.items()}
