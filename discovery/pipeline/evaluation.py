"""Evaluating circuits: metric of the circuit, of the full model and of the empty circuit;
faithfulness f = (m(C) - m(empty)) / (m(full) - m(empty)); faithfulness curves, CPR and CMD."""

from __future__ import annotations

import sys
import weakref

import numpy as np
import torch
from ..core.progress import progress as progress_bar

from ..engine.cached import run_cached
from ..methods.common import Setup, masked_metric_values
from .selection import prune as prune_edges
from .selection import top_n

CURVE_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)

# Each setup's evaluated circuits: the metric per example, by the circuit's edge set (and what else
# determines it), so that the target search, the chosen circuit and the curve evaluate a circuit once.
# Kept while the setup lives.
_memo: "weakref.WeakKeyDictionary[Setup, dict]" = weakref.WeakKeyDictionary()


def memo(setup: Setup) -> dict:
    """The setup's memo of evaluated circuits (module comment above)."""
    return _memo.setdefault(setup, {})


def forget(setup: Setup) -> None:
    """Drop the setup's memo: the next evaluation of each circuit runs again."""
    _memo.pop(setup, None)


@torch.no_grad()
def circuit_metrics(setup: Setup, circuits: list[np.ndarray], max_rows: int | None = None, desc: str | None = None,
                    per_example: bool = False, skip: bool = True) -> np.ndarray:
    """Mean metric of each circuit (bool per edge) under the setup's intervention; with per_example,
    the metric of every example instead: [n_circuits, n_examples] in task row order.

    Cost follows the circuits: the full model is the batch's clean run and, with patching, the empty
    circuit its corrupted run (both made once per setup and batch, see Setup.run_cache); any other
    circuit is a cached run of the patching core (engine/cached.py: run_cached) that computes only the
    nodes the logits depend on and whose inputs are not all corrupted (skip=False computes every
    node: the same numbers). max_rows: rows (circuits x examples) per pass; None: one circuit per pass
    on CPU (measured faster there: 20 curve circuits of GPT-2-small's shape took 3.3x longer 4 per
    pass, benchmarks/bench_eval.py), 512 rows on CUDA."""
    graph = setup.graph
    positional = graph.n_positions is not None
    valid = torch.as_tensor(graph.valid)
    circuits = [np.asarray(c, bool) for c in circuits]
    keys = [(setup.intervention, id(setup.metric), setup.batch_size, len(setup.task), skip, max_rows,
             np.packbits(c).tobytes()) for c in circuits]
    done = memo(setup)
    known = {k: done[k] for k in keys if k in done}
    values = np.zeros((len(circuits), len(setup.task)))
    for i, k in enumerate(keys):
        if k in known:
            values[i] = known[k]
    first = {k: i for i, k in reversed(list(enumerate(keys)))}  # a circuit given twice is evaluated once
    full = [bool(c.all()) for c in circuits]
    empty = [not c.any() and setup.intervention == "patching" for c in circuits]
    fresh = [i for i in range(len(circuits)) if keys[i] not in known and first[keys[i]] == i]
    todo = [i for i in fresh if not (full[i] or empty[i])]
    offs = torch.stack([valid & ~torch.as_tensor(graph.edge_mask_matrix(circuits[i])) for i in todo]).float() \
        if todo else None
    bar = progress_bar(total=len(todo) * -(-len(setup.task) // setup.batch_size), desc=desc, file=sys.stderr,
               disable=not setup.progress or desc is None, leave=False)
    for batch in setup.batches(desc, bar=False):  # on_batch sees the pass's name (its own bar is above)
        b = len(batch.rows)
        c = setup.run_cache(batch)
        clean_logits = c.clean_logits if setup.metric.needs_clean_logits else None
        for i in fresh:
            if full[i] or empty[i]:
                logits = c.clean_logits if full[i] else c.ref_logits
                values[i, batch.rows] = setup.metric(logits, batch, clean_logits).double().cpu().numpy()
        rows = max_rows if max_rows is not None else (512 if setup.device.type == "cuda" else b)
        per_pass = max(1, rows // b)
        for start in range(0, len(todo), per_pass):
            off = offs[start:start + per_pass].to(setup.device)
            if positional:  # the cached run has no per-position edges: the plain core
                m = masked_metric_values(setup, batch, c.ref, off, clean_logits).cpu().numpy()
            else:
                logits = run_cached(c, 0, off, skip)
                m = np.stack([setup.metric(logits[j * b:(j + 1) * b], batch, clean_logits).double().cpu().numpy()
                              for j in range(off.shape[0])])
            values[np.ix_(todo[start:start + off.shape[0]], batch.rows)] = m
            bar.update(off.shape[0])
    bar.close()
    for i in fresh:
        done[keys[i]] = values[i].copy()
    for i, k in enumerate(keys):
        if k not in known and first[k] != i:
            values[i] = values[first[k]]
    return values if per_example else values.mean(1)


def faithfulness(m_circuit: float, m_full: float, m_empty: float) -> float:
    denom = m_full - m_empty
    return float("nan") if denom == 0 else float((m_circuit - m_empty) / denom)


def evaluate_circuit(setup: Setup, in_circuit: np.ndarray) -> dict:
    """Metrics of exactly the given edges (no pruning): clean, corrupted, circuit, faithfulness."""
    graph = setup.graph
    full, empty, circ = circuit_metrics(
        setup, [np.ones(graph.n_edges, bool), np.zeros(graph.n_edges, bool), np.asarray(in_circuit, bool)],
        desc="evaluate")
    return {"clean": float(full), "corrupted": float(empty), "circuit": float(circ),
            "faithfulness": faithfulness(circ, full, empty), "n_edges": int(np.sum(in_circuit))}


def edge_auc(scores, truth) -> float:
    """ROC AUC of |score| as a detector of the true edges (bool per edge); unscored (NaN) edges rank
    last. NaN when the truth has only one class."""
    from sklearn.metrics import roc_auc_score

    truth = np.asarray(truth, bool)
    if truth.all() or not truth.any():
        return float("nan")
    importance = np.nan_to_num(np.abs(np.asarray(scores, np.float64)), nan=-1.0)
    return float(roc_auc_score(truth, importance))


def _area(xs, ys) -> float:
    ys = np.asarray(ys, dtype=np.float64)
    if np.isnan(ys).any():
        return float("nan")
    return float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)))


def faithfulness_curves(setup: Setup, scores, percents=CURVE_PERCENTS, prune: bool = True, bootstrap: int = 0,
                        seed: int = 0, confidence: float = 0.95, max_rows: int | None = None) -> dict:
    """Faithfulness of the top-k% edges, by signed and by absolute scores; CPR and CMD (MIB).

    CPR: area under f (signed selection); CMD: area under |1 - f| (absolute selection); both over the
    selected edge fraction (x = percent / 100, as MIB) from 0 (the empty circuit, f = 0) to 1,
    trapezoidal. Each point records the edges selected and the edges left after pruning.

    With bootstrap=B, examples are resampled B times (with replacement) and every faithfulness, CPR
    and CMD gets a percentile confidence interval `*_ci` = [low, high]. max_rows: as circuit_metrics."""
    graph, hib = setup.graph, setup.metric.higher_is_better
    circuits, meta = [np.ones(graph.n_edges, bool), np.zeros(graph.n_edges, bool)], []
    for absolute in (False, True):
        for pct in percents:
            n = max(1, int(round(graph.n_edges * pct / 100)))
            c = top_n(graph, scores, n, higher_is_better=hib, absolute=absolute)
            c = prune_edges(graph, c) if prune else c
            circuits.append(c)
            meta.append((absolute, pct, n, int(c.sum())))
    values = circuit_metrics(setup, circuits, max_rows=max_rows, desc="faithfulness curve", per_example=True)
    out = summarize_curves(values.mean(1), meta, percents)
    if bootstrap:
        rng = np.random.default_rng(seed)
        n_ex = values.shape[1]
        draws = [summarize_curves(values[:, rng.integers(0, n_ex, n_ex)].mean(1), meta, percents) for _ in range(bootstrap)]
        tail = (1 - confidence) / 2 * 100
        ci = lambda xs: [float(v) for v in np.nanpercentile(np.asarray(xs, float), [tail, 100 - tail])]  # noqa: E731
        for key in ("cpr", "cmd"):
            out[f"{key}_ci"] = ci([d[key] for d in draws])
        for key in ("curve_signed", "curve_absolute"):
            for i, point in enumerate(out[key]):
                point["faithfulness_ci"] = ci([d[key][i]["faithfulness"] for d in draws])
        out["bootstrap"] = {"resamples": bootstrap, "confidence": confidence, "seed": seed}
    return out


def summarize_curves(means: np.ndarray, meta: list, percents) -> dict:
    """Curves, CPR and CMD from the mean metric of [full, empty, *curve circuits]."""
    full, empty = means[0], means[1]
    curves = {"signed": [], "absolute": []}
    for (absolute, pct, n, kept), v in zip(meta, means[2:]):
        curves["absolute" if absolute else "signed"].append(
            {"percent": pct, "n_selected": n, "n_edges": kept, "faithfulness": faithfulness(v, full, empty)})
    xs = np.array([0.0] + [p / 100 for p in percents])
    f_signed = [0.0] + [p["faithfulness"] for p in curves["signed"]]
    f_abs = [0.0] + [p["faithfulness"] for p in curves["absolute"]]
    return {"clean": float(full), "corrupted": float(empty), "curve_signed": curves["signed"],
            "curve_absolute": curves["absolute"], "cpr": _area(xs, f_signed),
            "cmd": _area(xs, np.abs(1 - np.asarray(f_abs)))}
