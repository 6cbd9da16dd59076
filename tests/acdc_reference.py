"""A plain ACDC, written for clarity: one full forward pass (per data batch) for every edge it measures.

It follows the definition in discovery/methods/acdc.py word for word and shares none of its code: the
circuit is a bool vector over edges, each trial circuit is evaluated from the embeddings with the
patching core's `run`, and "has a path to the logits" is a small memoised recursion over node names.
"""

import math

import numpy as np
import torch

from discovery.engine.patching import run


def _consumers(graph, reader: int) -> list[str]:
    """The source nodes that read through this reader slot (a key/value slot feeds its whole group)."""
    owner, slot = graph.reader_owner[reader], graph.reader_slot[reader]
    if slot == "logits":
        return []
    if ".kv" in owner:
        layer, group = owner[1:].split(".kv")
        size = graph.n_heads // graph.n_kv_heads
        return [f"a{layer}.h{h}" for h in range(int(group) * size, (int(group) + 1) * size)]
    return [owner]


def reaches_logits(graph, keep: np.ndarray, reader: int) -> bool:
    """True if some path of kept edges leads from the reader slot's node(s) to the logits."""
    memo = {}

    def source_reaches(source: str) -> bool:
        if source not in memo:
            memo[source] = False
            for e in np.flatnonzero(keep & (graph.edge_src == graph.source_index[source])):
                if reader_reaches(int(graph.edge_dst[e])):
                    memo[source] = True
                    break
        return memo[source]

    def reader_reaches(r: int) -> bool:
        return graph.reader_slot[r] == "logits" or any(source_reaches(s) for s in _consumers(graph, r))

    return reader_reaches(reader)


@torch.no_grad()
def acdc_reference(setup, tau: float, candidates=None, absolute: bool = False) -> dict:
    graph, metric = setup.graph, setup.metric
    batches = list(setup.batches())
    refs = [setup.reference(b) for b in batches]
    cleans = [run(setup.adapter, graph, b.clean, last=b.clean_last).logits for b in batches]
    n_forwards = len(batches) * (1 + (setup.intervention == "patching"))
    n_examples = sum(len(b.rows) for b in batches)

    def mean_metric(keep: np.ndarray) -> float:
        nonlocal n_forwards
        off = torch.as_tensor(graph.valid & ~graph.edge_mask_matrix(keep), dtype=torch.float32)[None]
        total = 0.0
        for b, ref, clean in zip(batches, refs, cleans):
            logits = run(setup.adapter, graph, b.clean, last=b.clean_last, ref=ref, off=off).logits
            total += float(metric(logits, b, clean).double().sum())
            n_forwards += 1
        return total / n_examples

    cand = np.ones(graph.n_edges, bool) if candidates is None else np.asarray(candidates, bool)
    keep = cand.copy()
    if cand.all():
        current = sum(float(metric(c, b, c).double().sum()) for b, c in zip(batches, cleans)) / n_examples
    else:
        current = mean_metric(keep)
    scores = np.full(graph.n_edges, math.nan)
    measured = 0
    for e in reversed(range(graph.n_edges)):  # destinations from the logits backwards, latest source first
        if not cand[e]:
            continue
        if not reaches_logits(graph, keep, int(graph.edge_dst[e])):
            keep[e] = False  # removing it changes the metric by exactly 0
            scores[e] = 0.0
            continue
        trial = keep.copy()
        trial[e] = False
        m = mean_metric(trial)
        measured += 1
        scores[e] = m - current
        hurt = abs(scores[e]) if absolute else (-scores[e] if metric.higher_is_better else scores[e])
        if hurt <= tau:
            keep, current = trial, m
    return {"in_circuit": keep, "scores": scores, "n_forward_passes": n_forwards, "n_edges_evaluated": measured}
