"""Edge-scoring methods, each a small module over the one patching core.

Every method returns per-edge scores in the graph's edge order: the estimated (for `exact`, measured)
change of the metric when that one edge is switched to its reference value, mean over examples."""

from ..core.errors import UserError
from .clean_corrupted import clean_corrupted
from .common import INTERVENTIONS, Setup
from .eap import eap
from .eap_ig import eap_ig
from .eap_ig_activations import eap_ig_activations
from .exact import exact

METHODS = {
    "eap": eap,
    "eap-ig": eap_ig,
    "eap-ig-activations": eap_ig_activations,
    "clean-corrupted": clean_corrupted,
    "exact": exact,
}
STEPPED = {"eap-ig", "eap-ig-activations"}
QK_FIX_METHODS = {"eap", "eap-ig", "clean-corrupted"}  # gradient methods the QK fix (qk.py) applies to


def score_edges(setup: Setup, method: str, steps: int = 5, workers=None, qk_fix: bool = False):
    """Per-edge scores (float32 [n_edges]). workers: a discovery.pipeline.distributed.Workers to shard the
    examples over (each scores its shard; the means are combined weighted by row counts).
    qk_fix: score q/k edges through the exact attention pattern (qk.py; QK_FIX_METHODS only). Off
    here, so that the plain names are the published estimators; discover() turns it on by default."""
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
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
    return METHODS[method](setup, **kwargs)


__all__ = ["METHODS", "INTERVENTIONS", "QK_FIX_METHODS", "Setup", "score_edges"] + [f.__name__ for f in METHODS.values()]
