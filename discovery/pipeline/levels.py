"""Node- and neuron-level circuits: selection, evaluation and faithfulness curves over components.

A node circuit is a set of sources (`input`, heads, MLPs; the logits are always in). A node out of the
circuit writes its reference value on every edge out of it, so the edge circuit it stands for is
every edge whose source is in and whose reader belongs to a node that is in (an out node's inputs
cannot matter: its output is the reference whatever they are). It is evaluated as that edge circuit,
so node circuits share the edge circuits' evaluation, curves and files. There is nothing to prune:
every node writes into the logits' input directly.

A neuron circuit keeps, for each source, a subset of its d_model output dimensions: on every edge out
of a source the kept dimensions carry the live value and the others the reference (the patching
core's `off_dims`). Its edges in the file are those out of sources with a kept neuron.

Selection: without --top-n / --threshold, the smallest top-k units (by |score|) whose circuit meets
the faithfulness target (default 0.9: |1 - f| <= 0.1), searched as the edge selection searches edge
counts (discovery/pipeline/auto.py: smallest_meeting, over the same fractions of the units); k is
the number of nodes or of neurons. If no size meets it, the most faithful size evaluated is kept.

Faithfulness curves rank the units (nodes or neurons) by their scores and evaluate the top k% for
the same percentages as the edge curves; a point's `n_selected` counts units, `n_edges` the edges
the selection stands for.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from ..core.progress import progress as progress_bar

from ..core.errors import UserError
from .evaluation import CURVE_PERCENTS, summarize_curves, circuit_metrics, faithfulness
from .auto import GRID, smallest_meeting
from .options import DEFAULT_TARGET
from ..core.graph import Graph
from ..methods.common import Setup
from ..core.names import LEVELS  # noqa: F401 - the level names, light for the CLI
from ..engine.patching import run
from .selection import importance



def top_units(scores, n: int, *, higher_is_better: bool = True, absolute: bool = True) -> np.ndarray:
    """Bool mask (the shape of scores) of the n most important units (stable order on ties)."""
    if n < 0:
        raise UserError(f"--top-n must be non-negative (got {n})")
    s = np.asarray(scores, dtype=np.float64)
    imp = importance(np.nan_to_num(s.ravel(), nan=0.0), higher_is_better, absolute)
    keep = np.zeros(s.size, dtype=bool)
    keep[np.argsort(-imp, kind="stable")[:min(n, s.size)]] = True
    return keep.reshape(s.shape)


def select_units(setup: Setup, level: str, scores, *, top: int | None, thresh: float | None, grow: int | None,
                 absolute: bool, target: float | None = None) -> tuple[np.ndarray, str, float, dict | None]:
    """(keep, selection kind, its value, the target search's info or None): top_n / threshold units, or
    (by default, or given `target`) the smallest top-k units meeting the faithfulness target."""
    if sum(x is not None for x in (top, thresh, grow, target)) > 1:
        raise UserError("give only one of --top-n, --threshold, --greedy, --target")
    if grow is not None:
        raise UserError("--greedy grows edges from the logits; at --level node/neuron use --top-n or --threshold")
    hib = setup.metric.higher_is_better
    if thresh is not None:
        s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
        return importance(s, hib, absolute) >= thresh, "threshold", thresh, None
    if top is not None:
        return top_units(scores, top, higher_is_better=hib, absolute=absolute), "top-n", top, None
    t = DEFAULT_TARGET if target is None else target
    keep, info = smallest_faithful_units(setup, level, scores, t, absolute=absolute)
    return keep, "faithfulness", t, info


def smallest_faithful_units(setup: Setup, level: str, scores, target: float = DEFAULT_TARGET, *,
                            absolute: bool = True) -> tuple[np.ndarray, dict]:
    """(keep, info): the smallest top-k nodes or neurons meeting the faithfulness target, by the edge
    selection's search (discovery/pipeline/auto.py: smallest_meeting); info as smallest_faithful's, with
    n_units (the kept nodes or neurons) and n_edges (the edges they stand for)."""
    graph, hib = setup.graph, setup.metric.higher_is_better
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    edges_of = node_edges if level == "node" else neuron_edges
    base: list[float] = []

    def faithfulness_of(ks, circuits):
        desc = f"target search: {', '.join(str(k) for k in ks)} of {scores.size} {level}s"
        if level == "node":
            extra = [] if base else [np.ones(graph.n_edges, bool), np.zeros(graph.n_edges, bool)]
            means = list(circuit_metrics(setup, extra + [node_edges(graph, c) for c in circuits], desc=desc))
        else:
            extra = [] if base else [np.ones(scores.shape, bool), np.zeros(scores.shape, bool)]
            means = list(neuron_circuit_metrics(setup, extra + list(circuits), desc=desc))
        if not base:
            base.extend(means[:2])
            means = means[2:]
        return [faithfulness(m, base[0], base[1]) for m in means]

    chunk = 1 if setup.device.type == "cpu" else len(GRID)
    k, met, tried = smallest_meeting(scores.size, lambda k: top_units(scores, k, higher_is_better=hib,
                                                                       absolute=absolute),
                                     faithfulness_of, target, chunk=chunk)
    keep, f = tried[k]
    unit = "node" if level == "node" else "neuron"
    info = {"target": target, "met": met, "k": int(k), "unit": unit, "n_units": int(keep.sum()),
            "n_edges": int(edges_of(graph, keep).sum()), "faithfulness": float(f),
            "evaluated": [{"k": int(j), "n_edges": int(edges_of(graph, tried[j][0]).sum()),
                          "faithfulness": float(tried[j][1])} for j in sorted(tried)]}
    return keep, info


def node_edges(graph: Graph, keep_nodes) -> np.ndarray:
    """The edge circuit a node circuit stands for: source in, and the reader's node in (logits: always)."""
    keep_nodes = np.asarray(keep_nodes, dtype=bool)
    reader_in = np.array([True if not nodes else bool(keep_nodes[nodes].any()) for nodes in graph.reader_sources])
    return keep_nodes[graph.edge_src] & reader_in[graph.edge_dst]


def neuron_edges(graph: Graph, keep_neurons) -> np.ndarray:
    """Edges of a neuron circuit in the file: those out of a source with a kept neuron (into any reader)."""
    return np.asarray(keep_neurons, dtype=bool).any(1)[graph.edge_src]


@torch.no_grad()
def neuron_circuit_metrics(setup: Setup, circuits: list[np.ndarray], max_bytes: int = 64 * 2**20,
                           desc: str | None = None, per_example: bool = False) -> np.ndarray:
    """Mean metric of each neuron circuit (bool [n_sources, d_model]); per_example: [n_circuits, n_examples].
    Several circuits share a forward pass while their per-example dimension masks fit in max_bytes."""
    graph, d = setup.graph, setup.adapter.d_model
    valid = torch.as_tensor(graph.valid, dtype=torch.float32)
    out_dims = [torch.as_tensor(~np.asarray(c, dtype=bool), dtype=torch.float32) for c in circuits]
    values = np.zeros((len(circuits), len(setup.task)))
    bar = progress_bar(total=len(circuits) * -(-len(setup.task) // setup.batch_size), desc=desc, file=sys.stderr,
               disable=not setup.progress or desc is None, leave=False)
    for batch in setup.batches():
        b = len(batch.rows)
        ref = setup.reference(batch)
        clean_logits = setup.clean_run(batch).logits if setup.metric.needs_clean_logits else None
        per_pass = max(1, min(512 // b, max_bytes // max(1, b * graph.n_sources * d * 4)))
        for start in range(0, len(circuits), per_pass):
            dims = torch.stack(out_dims[start:start + per_pass])  # [K, S, d]
            k = dims.shape[0]
            off = valid[None] * (dims.amax(2, keepdim=True) > 0)  # only sources with a neuron out are patched
            rep = lambda t: t.repeat(k, *([1] * (t.dim() - 1))) if t.shape[0] == b else t  # noqa: E731
            result = run(setup.adapter, graph, batch.clean.repeat(k, 1), last=batch.clean_last.repeat(k),
                         ref=ref.map(rep), off=off.to(setup.device).repeat_interleave(b, 0),
                         off_dims=dims.to(setup.device).repeat_interleave(b, 0))
            for i in range(k):
                values[start + i, batch.rows] = setup.metric(result.logits[i * b:(i + 1) * b], batch,
                                                             clean_logits).double().cpu().numpy()
            bar.update(k)
    bar.close()
    return values if per_example else values.mean(1)


def evaluate_units(setup: Setup, level: str, keep) -> dict:
    """clean, corrupted, circuit and faithfulness of one node or neuron circuit."""
    graph = setup.graph
    if level == "node":
        full, empty, circ = circuit_metrics(setup, [np.ones(graph.n_edges, bool), np.zeros(graph.n_edges, bool),
                                                    node_edges(graph, keep)], desc="evaluate")
    else:
        shape = (graph.n_sources, setup.adapter.d_model)
        full, empty, circ = neuron_circuit_metrics(setup, [np.ones(shape, bool), np.zeros(shape, bool), keep],
                                                   desc="evaluate")
    return {"clean": float(full), "corrupted": float(empty), "circuit": float(circ),
            "faithfulness": faithfulness(circ, full, empty)}


def unit_curves(setup: Setup, level: str, scores, percents=CURVE_PERCENTS) -> dict:
    """Faithfulness of the top-k% units by signed and by absolute scores; CPR and CMD over the unit
    fraction (as the edge curves over the edge fraction)."""
    graph, hib = setup.graph, setup.metric.higher_is_better
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    keeps, meta = [np.ones(scores.shape, bool), np.zeros(scores.shape, bool)], []
    for absolute in (False, True):
        for pct in percents:
            n = max(1, int(round(scores.size * pct / 100)))
            keep = top_units(scores, n, higher_is_better=hib, absolute=absolute)
            edges = node_edges(graph, keep) if level == "node" else neuron_edges(graph, keep)
            keeps.append(keep)
            meta.append((absolute, pct, n, int(edges.sum())))
    if level == "node":
        values = circuit_metrics(setup, [node_edges(graph, k) for k in keeps], desc="faithfulness curve",
                                 per_example=True)
    else:
        values = neuron_circuit_metrics(setup, keeps, desc="faithfulness curve", per_example=True)
    return summarize_curves(values.mean(1), meta, percents)
