"""Edge-scoring methods, each a small module over the one patching core; which exist and what each
supports is the method registry's (discovery/core/registry.py), and score_edges (scoring.py) runs one.

Every method returns per-edge scores in the graph's edge order: the estimated (for `exact`, measured)
change of the metric when that one edge is switched to its reference value, mean over examples."""

from .clean_corrupted import clean_corrupted
from .common import INTERVENTIONS, Setup
from .eap import eap
from .eap_ig import eap_ig
from .eap_ig_activations import eap_ig_activations
from .exact import exact
from .scoring import QK_FIX_METHODS, SCORERS, STEPPED, score_edges, scorer

METHODS = {name: scorer(name) for name in SCORERS}

__all__ = ["METHODS", "INTERVENTIONS", "QK_FIX_METHODS", "STEPPED", "Setup", "score_edges"] + [f.__name__ for f in METHODS.values()]
