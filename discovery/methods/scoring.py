"""score_edges: the edge scorers' dispatch, by the method registry (discovery/core/registry.py).

Every method returns per-edge scores in the graph's edge order: the estimated (for `exact`, measured)
change of the metric when that one edge is switched to its reference value, mean over examples."""

from __future__ import annotations

import importlib

from ..core import registry
from ..core.errors import UserError
from .common import Setup

SCORERS = registry.names("score")
STEPPED = {m.name for m in registry.METHODS if m.kind == "score" and m.stepped}
QK_FIX_METHODS = set(registry.names("score", qk_fix=True))  # gradient methods the QK fix (qk.py) applies to


def scorer(method: str):
    """The function of a scoring method (its registry row's `function` under discovery.methods)."""
    module, name = registry.method(method).function.split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


def score_edges(setup: Setup, method: str, steps: int = 5, workers=None, qk_fix: bool = False):
    """Per-edge scores (float32 [n_edges]). workers: a discovery.pipeline.distributed.Workers to shard the
    examples over (each scores its shard; the means are combined weighted by row counts).
    qk_fix: score q/k edges through the exact attention pattern (qk.py; QK_FIX_METHODS only). Off
    here, so that the plain names are the published estimators; discover() turns it on by default."""
    if method not in SCORERS:
        raise UserError(f"unknown method '{method}'; choose one of {', '.join(SCORERS)}")
    if qk_fix and method not in QK_FIX_METHODS:
        raise UserError(f"the QK fix applies to {', '.join(sorted(QK_FIX_METHODS))}, not to '{method}'")
    if qk_fix and setup.graph.n_positions is not None:
        raise UserError("the QK fix scores edges without positions; drop it (or --positions)")
    if workers is not None:
        if setup.graph.n_positions is not None:
            raise UserError("position-aware scoring runs in one process; drop the workers")
        if method in STEPPED and steps < 1:  # here, not as a worker's error
            raise UserError(f"--steps must be at least 1 (got {steps})")
        return workers.score_edges(setup, method, steps, qk_fix=qk_fix)  # methods/ never imports distributed
    kwargs = {"qk_fix": True} if qk_fix else {}
    if method in STEPPED:
        kwargs["steps"] = steps
    return scorer(method)(setup, **kwargs)
