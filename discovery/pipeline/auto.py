"""The default pipeline (`--method auto`): a small faithful circuit without choosing a method, and the
faithfulness-target selection every scoring method uses by default.

Faithfulness-target selection (`smallest_faithful`): rank edges by |score|; the circuit is the
smallest top-k, pruned, whose faithfulness f = (m(C) - m(empty)) / (m(full) - m(empty)) is within
1 - target of 1 (|1 - f| <= 1 - target; default target 0.9, so 0.9 <= f <= 1.1). k is searched over
a grid of edge fractions (GRID: the faithfulness curve's fractions from 1%, so that with the curve on
the grid costs nothing extra), smallest first, stopping at the first size that meets the target; then
the bracket between the largest size that missed below it and that size is narrowed until it is at
most RESOLUTION of the edges (at least one edge) wide: by bisection on CPU (one circuit per pass),
REFINE evenly spaced sizes per round on CUDA (one call, several circuits per pass; smallest first).
The result is the smallest size that meets the target among those evaluated, with a size at most
one bracket width below it that misses. Each distinct circuit is evaluated once per setup
(circuit_metrics' memo), so the chosen circuit's evaluation and the curve's shared sizes cost
nothing more. Sizes are fractions of the graph,
so the selection can never keep a whole small graph by an absolute count; if no size meets the
target the most faithful one evaluated is kept (and the circuit's warnings say so).

`auto`:
1. Score every edge with EAP-IG (5 steps) with the QK fix (methods/qk.py).
2. Select by the faithfulness target as above.
3. Only if that needs more than MAX_FRACTION of the edges (or misses the target): measure the top
   candidates (2x the edges step 2 kept, at most max_verify, default MAX_VERIFY) by exact single-edge patching, rank them
   by the measured effect ahead of the rest, and select again; the smaller circuit that meets the
   target wins (else the more faithful). The circuit's scores are then the measured effects where
   measured and EAP-IG's elsewhere (params["verified"] says how many). The first PROBE edges are
   timed first: by default the step is cut to the edges that fit in VERIFY_BUDGET times EAP-IG's own
   scoring time at that rate (params["verify_budget_s"]); the estimate of the whole step
   (params["verify_estimate_s"]) is written to stderr (with progress) before the rest runs; an explicit
   max_verify (--max-verify) replaces both caps by its count, 0 skips the step.

Cost: EAP-IG's (steps + 1 forwards and steps backwards per batch, plus the QK fix), then the
selection's evaluations (patched forwards, several masks per pass on CUDA): |GRID| at most, plus
about log2(bracket / (RESOLUTION * edges)) on CPU (7 for a 20% -> 50% bracket); step 3, when it runs, one patched forward per verified edge (batched).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from .evaluation import circuit_metrics, faithfulness
from ..methods import Setup, score_edges
from .options import DEFAULT_TARGET
from .selection import prune as prune_edges
from .selection import top_n
GRID = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)  # evaluation.CURVE_PERCENTS from 1%, as fractions
REFINE = 4  # sizes per refinement round on CUDA (CPU: 1, bisection)
RESOLUTION = 0.005  # the refinement stops at a bracket of this fraction of the edges
MAX_FRACTION = 0.4
MAX_VERIFY = 2000
VERIFY_BUDGET = 1.0  # default: the verification takes at most this many times the scoring's own time
PROBE = 8  # edges verified (and timed) before the estimate of the verification is written
AUTO_STEPS = 5


def meets(f: float, target: float) -> bool:
    return f == f and abs(1.0 - f) <= 1.0 - target + 1e-12


def smallest_meeting(n: int, make, faithfulness_of, target: float, *, chunk: int = 1
                     ) -> tuple[int, bool, dict[int, tuple[np.ndarray, float]]]:
    """The search of the module docstring over any ranked units (edges, nodes, neurons): make(k) is the
    circuit of the top k of n units, faithfulness_of(ks, circuits) the faithfulness of those sizes' circuits
    (one call per chunk of sizes). Returns (k, met, tried: k -> (circuit, faithfulness)); k is the most faithful size evaluated
    when none meets the target."""
    tried: dict[int, tuple[np.ndarray, float]] = {}

    def evaluate(ks):
        ks = sorted({int(k) for k in ks if 1 <= k <= n and k not in tried})
        if ks:
            circuits = [make(k) for k in ks]
            for k, c, f in zip(ks, circuits, faithfulness_of(ks, circuits)):
                tried[k] = (c, float(f))

    def ascending(ks):  # smallest first, stopping at the first size that meets the target
        ks = sorted({int(k) for k in ks})
        for lo in range(0, len(ks), chunk):
            evaluate(ks[lo:lo + chunk])
            if any(meets(tried[k][1], target) for k in ks[:lo + chunk] if k in tried):
                return

    ascending(max(1, int(round(f * n))) for f in GRID)
    good = [k for k in sorted(tried) if meets(tried[k][1], target)]
    if good:  # narrow the bracket (lo: a size that missed or 0, hi: the smallest that met)
        hi = good[0]
        lo = max([k for k in tried if k < hi], default=0)
        width = max(1, int(np.ceil(RESOLUTION * n)))
        while hi - lo > width:
            inner = [k for k in np.linspace(lo, hi, (REFINE if chunk > 1 else 1) + 2)[1:-1].round() if lo < k < hi]
            ascending(inner)
            hi = min(k for k in tried if lo < k <= hi and meets(tried[k][1], target))
            lo = max([k for k in tried if lo <= k < hi], default=lo)
    good = [k for k in sorted(tried) if meets(tried[k][1], target)]
    if good:
        return good[0], True, tried
    # nothing meets the target: the most faithful (closest to 1)
    k = min(tried, key=lambda j: (abs(1.0 - tried[j][1]) if tried[j][1] == tried[j][1] else np.inf, j))
    return k, False, tried


def smallest_faithful(setup: Setup, scores, target: float = DEFAULT_TARGET, *, absolute: bool = True,
                      prune: bool = True) -> tuple[np.ndarray, dict]:
    """(in_circuit, info): the smallest top-k (pruned) meeting the target; info has the target,
    whether it was met, k, the kept edge count, the faithfulness and every evaluated point."""
    graph, hib = setup.graph, setup.metric.higher_is_better
    n_edges = graph.n_edges
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    base: list[float] = []

    def make(k):
        c = top_n(graph, scores, k, higher_is_better=hib, absolute=absolute)
        return prune_edges(graph, c) if prune else c

    def faithfulness_of(ks, circuits):
        extra = [] if base else [np.ones(n_edges, bool), np.zeros(n_edges, bool)]
        means = circuit_metrics(setup, extra + circuits,
                                desc=f"target search: {', '.join(str(k) for k in ks)} of {n_edges} edges")
        if not base:
            base.extend(means[:2])
            means = means[2:]
        return [faithfulness(m, base[0], base[1]) for m in means]

    chunk = 1 if setup.device.type == "cpu" else len(GRID)  # sizes per call (CUDA: several per pass)
    k, met, tried = smallest_meeting(n_edges, make, faithfulness_of, target, chunk=chunk)
    keep, f = tried[k]
    info = {"target": target, "met": met, "k": int(k), "n_edges": int(keep.sum()), "faithfulness": float(f),
            "evaluated": [{"k": int(j), "n_edges": int(tried[j][0].sum()), "faithfulness": float(tried[j][1])}
                          for j in sorted(tried)]}
    return keep, info


def _verified_scores(setup: Setup, scores: np.ndarray, n_verify: int, params: dict,
                     budget_s: float | None = None) -> np.ndarray:
    """EAP-IG's scores with the top n_verify (by |score|) replaced by their exact effects, ranked ahead
    of every unverified edge (an unverified edge's |score| is capped below the smallest verified one).
    The first PROBE edges are measured alone and timed; with budget_s, n_verify is cut to the edges
    that fit in it at that rate (never below the probe). params["verify_estimate_s"]: the whole
    verification's time at that rate, written to stderr (with progress) before the rest starts;
    params["verified"]: the edges verified."""
    from ..methods.exact import exact

    order = np.argsort(-np.abs(scores), kind="stable")[:n_verify]
    probe = order[:PROBE]
    t0 = time.perf_counter()
    measured = exact(setup, edges=probe).numpy().astype(np.float64)[probe]
    per_edge = (time.perf_counter() - t0) / len(probe)
    asked = len(order)
    if budget_s is not None and per_edge * asked > budget_s:
        order = order[:max(len(probe), int(budget_s / per_edge))]
    params["verified"] = len(order)
    params["verify_estimate_s"] = round(per_edge * len(order), 1)
    if setup.progress and len(order) > len(probe):
        cut = "" if len(order) == asked else \
            f", cut from {asked} to fit {VERIFY_BUDGET:g}x the scoring's {params['score_s']:.0f} s; --max-verify N to verify N"
        print(f"auto: the target needs over {MAX_FRACTION:.0%} of the edges: verifying {len(order)} edges by exact "
              f"patching, about {_duration(per_edge * len(order))} ({per_edge:.2f} s per edge{cut})",
              file=sys.stderr, flush=True)
    if len(order) > len(probe):
        rest_edges = order[len(probe):]
        measured = np.concatenate([measured, exact(setup, edges=rest_edges).numpy().astype(np.float64)[rest_edges]])
    out = scores.astype(np.float64).copy()
    rest = np.ones(len(out), bool)
    rest[order] = False
    floor = np.abs(measured).min()
    if rest.any() and np.abs(out[rest]).max() >= floor:  # keep the verified edges first in the ranking
        out[rest] *= 0.5 * floor / np.abs(out[rest]).max() if floor > 0 else 0.0
    out[order] = measured
    return out


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def auto(setup: Setup, *, target: float = DEFAULT_TARGET, qk_fix: bool = True, prune: bool = True, workers=None,
         steps: int = AUTO_STEPS, max_verify: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(scores, in_circuit, params) of the default pipeline (module docstring). max_verify: verify at
    most this many edges (0: none); None: at most MAX_VERIFY and within VERIFY_BUDGET times the
    scoring's own time (params["score_s"])."""
    t0 = time.perf_counter()
    scores = score_edges(setup, "eap-ig", steps=steps, workers=workers, qk_fix=qk_fix).numpy()
    score_s = time.perf_counter() - t0
    keep, info = smallest_faithful(setup, scores, target, prune=prune)
    params = {"scorer": "eap-ig", "steps": steps, "qk_fix": qk_fix, "target": target, "verified": 0,
              "search": info, "score_s": round(score_s, 3)}
    n = setup.graph.n_edges
    cap = MAX_VERIFY if max_verify is None else max_verify
    n_verify = min(n, cap, max(2 * info["k"], int(np.ceil(MAX_FRACTION * n))))
    if (not info["met"] or info["k"] > MAX_FRACTION * n) and n_verify > 0:
        budget = VERIFY_BUDGET * score_s if max_verify is None else None
        if budget is not None:
            params["verify_budget_s"] = round(budget, 3)
        verified = _verified_scores(setup, scores, n_verify, params, budget)
        keep2, info2 = smallest_faithful(setup, verified, target, prune=prune)
        better = (info2["met"] and (not info["met"] or info2["n_edges"] < info["n_edges"])) or \
                 (not info["met"] and not info2["met"] and abs(1 - info2["faithfulness"]) < abs(1 - info["faithfulness"]))
        params["verified_search"] = info2
        if better:
            scores, keep = verified.astype(np.float32), keep2
            params["search"] = info2
        params["used_verified"] = bool(better)
    return scores, keep, params
