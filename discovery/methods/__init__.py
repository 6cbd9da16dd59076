"""Edge-scoring methods, each a small module over the one patching core.

Every method returns per-edge scores in the graph's edge order: the estimated (for `exact`, measured)
change of the metric when that one edge is switched to its reference value, mean over examples."""

from ..errors import UserError
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


def score_edges(setup: Setup, method: str, steps: int = 5, workers=None):
    """Per-edge scores (float32 [n_edges]). workers: a discovery.distributed.Workers to shard the
    examples over (each scores its shard; the means are combined weighted by row counts)."""
    if method not in METHODS:
        raise UserError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    if workers is not None:
        if method in STEPPED and steps < 1:  # here, not as a worker's error
            raise UserError(f"--steps must be at least 1 (got {steps})")
        from ..distributed import score_edges_sharded
        return score_edges_sharded(setup, method, steps, workers)
    return METHODS[method](setup, steps=steps) if method in STEPPED else METHODS[method](setup)


__all__ = ["METHODS", "INTERVENTIONS", "Setup", "score_edges"] + [f.__name__ for f in METHODS.values()]
