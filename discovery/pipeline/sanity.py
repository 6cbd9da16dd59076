"""Saying when a result means nothing: checks of the behaviour a circuit is supposed to explain.

A circuit explains the difference between the clean and the corrupted run (the full model and the
empty circuit under the setup's intervention). Per example i, with d = +1 for a higher-is-better
metric and -1 otherwise, the behaviour is b_i = d * (m_i(full) - m_i(empty)). Warnings:

- "no behaviour": mean(b) <= 0: the clean run is not better than the corrupted one in the metric's
  own direction; the model does not do the task, and faithfulness (a ratio over m(full) - m(empty))
  measures nothing.
- "behaviour within noise": 0 < mean(b) < NOISE_Z * std(b) / sqrt(n): the difference is within two
  standard errors of zero over the task's examples.
- "target missed": the faithfulness-target selection found no circuit meeting its target (added by
  discover() from the search).
- "empty circuit" / "whole graph": the selection kept no unit (edge, node or neuron) or every unit of
  the graph; either explains nothing about which components carry the behaviour.
- "tau above the behaviour": an ACDC threshold tau >= |mean(m(full) - m(empty))|, the whole behaviour
  in the metric ACDC uses; a single removal may then lose all of it, and ACDC can remove every edge.

`discover` and `evaluate` record them in the circuit JSON / result (`warnings`) and issue each as a
`ResultWarning` (Python's warnings, shown on stderr; the CLI prints them as `circuitry: warning: ...`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .evaluation import circuit_metrics
from ..methods.common import Setup

NOISE_Z = 2.0


class ResultWarning(UserWarning):
    """A result that is computed correctly but means little (see discovery/pipeline/sanity.py)."""


def behaviour(setup: Setup) -> np.ndarray:
    """b_i per example (task row order): d * (m_i(full) - m_i(empty)). The full model and the empty
    circuit are the setup's cached runs (evaluation.circuit_metrics), shared with every evaluation."""
    n = setup.graph.n_edges
    values = circuit_metrics(setup, [np.ones(n, bool), np.zeros(n, bool)], per_example=True)
    sign = 1.0 if setup.metric.higher_is_better else -1.0
    return sign * (values[0] - values[1])


def behaviour_warnings(setup: Setup, b: np.ndarray | None = None) -> list[str]:
    b = behaviour(setup) if b is None else np.asarray(b, dtype=np.float64)
    name = setup.metric.name
    n = len(b)
    mean = float(b.mean()) if n else float("nan")
    se = float(b.std(ddof=1) / math.sqrt(n)) if n > 1 else float("inf")
    direction = "higher" if setup.metric.higher_is_better else "lower"
    if not mean > 0:
        return [f"no behaviour: the full model's {name} is not better ({direction} is better) than the empty "
                f"circuit's (mean difference {mean:+.4g} over {n} examples); the model does not do this task, "
                "so faithfulness and edge scores mean nothing"]
    if mean < NOISE_Z * se:
        return [f"behaviour within noise: the full model beats the empty circuit on {name} by {mean:.4g} +- "
                f"{se:.2g} (standard error over {n} examples); the circuit explains a difference that may be noise"]
    return []


def target_warning(info: dict) -> list[str]:
    if info.get("met", True):
        return []
    size = f"{info['n_units']} {info['unit']}s" if "unit" in info else f"{info['n_edges']} edges"
    return [f"target missed: no top-k circuit reached faithfulness within {1 - info['target']:.2g} of 1 "
            f"(best {info['faithfulness']:.3f} with {size}); kept the most faithful one"]


def size_warning(n_kept: int, n_total: int, unit: str = "edge") -> list[str]:
    if n_total and n_kept == 0:
        return [f"empty circuit: no {unit} of {n_total} was kept; the circuit explains nothing (a lower "
                "threshold or tau, or the default faithfulness-target selection, keeps what matters)"]
    if n_total and n_kept == n_total:
        return [f"whole graph: all {n_total} {unit}s were kept; the circuit is the model, not a part of it"]
    return []


def tau_warning(setup: Setup, tau: float) -> list[str]:
    """Warn when an ACDC tau is at least the whole behaviour |mean(m(full) - m(empty))| in its metric."""
    scale = abs(float(behaviour(setup).mean()))
    if tau >= scale:
        return [f"tau above the behaviour: tau {tau:.4g} >= |clean - corrupted| = {scale:.4g} in "
                f"{setup.metric.name}; one removal may lose the whole behaviour (leave tau out for the default, "
                "a fraction of the behaviour)"]
    return []


def emit(messages: list[str]) -> None:
    for m in messages:
        warnings.warn(m, ResultWarning, stacklevel=3)
