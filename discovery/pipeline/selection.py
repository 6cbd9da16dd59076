"""Choosing a circuit from edge scores: top-n, threshold, greedy growth from the logits; pruning.

Scores are metric changes when an edge is switched to its reference value. For a metric where higher
means more of the behaviour (logit/prob diff) an important edge has a negative score; for KL a
positive one. `importance` turns both into "higher is more important" for signed selection.

Each selection takes the graph, or the `Setup` the scores were made with: then the direction of its
metric is the direction of signed selection (`absolute=False`), so it cannot disagree with the metric
(KL is lower-is-better). `higher_is_better` given explicitly must agree with that metric; with a bare
Graph, signed selection needs it (|score| selection does not)."""

from __future__ import annotations

import heapq

import numpy as np

from ..core.errors import UserError
from ..core.graph import Graph


def importance(scores, higher_is_better: bool = True, absolute: bool = True) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if absolute:
        return np.abs(s)
    return -s if higher_is_better else s


def direction(graph_or_setup, higher_is_better: bool | None, absolute: bool) -> tuple[Graph, bool]:
    """(graph, higher_is_better) for a selection given a Graph or a Setup (see the module docstring)."""
    metric = getattr(graph_or_setup, "metric", None)
    graph = graph_or_setup.graph if metric is not None else graph_or_setup
    if metric is not None:
        if higher_is_better is not None and bool(higher_is_better) != metric.higher_is_better:
            raise UserError(f"higher_is_better={bool(higher_is_better)} disagrees with the setup's metric "
                            f"'{metric.name}' ({'higher' if metric.higher_is_better else 'lower'} is better); "
                            "drop higher_is_better: the setup's metric decides")
        return graph, metric.higher_is_better
    if higher_is_better is None:
        if not absolute:
            raise UserError("signed selection (absolute=False) needs the metric's direction: pass the Setup the "
                            "scores were made with in place of its graph, or higher_is_better=True/False "
                            "(False for a distance such as kl)")
        return graph, True  # |score|: the direction does not matter
    return graph, bool(higher_is_better)


def top_n(graph: Graph, scores, n: int, *, higher_is_better: bool | None = None, absolute=True) -> np.ndarray:
    """The n most important edges (bool per edge). graph: a Graph or the scores' Setup (module docstring)."""
    graph, higher_is_better = direction(graph, higher_is_better, absolute)
    if n < 0:
        raise UserError(f"--top-n must be non-negative (got {n})")
    imp = importance(scores, higher_is_better, absolute)
    keep = np.zeros(graph.n_edges, dtype=bool)
    keep[np.argsort(-imp, kind="stable")[:min(n, graph.n_edges)]] = True
    return keep


def threshold(graph: Graph, scores, t: float, *, higher_is_better: bool | None = None, absolute=True) -> np.ndarray:
    """Edges whose importance is at least t. graph: a Graph or the scores' Setup (module docstring)."""
    graph, higher_is_better = direction(graph, higher_is_better, absolute)
    return importance(scores, higher_is_better, absolute) >= t


def greedy(graph: Graph, scores, n: int, *, higher_is_better: bool | None = None, absolute=True) -> np.ndarray:
    """Grow from the logits: repeatedly add the most important edge into a node already in the circuit.
    graph: a Graph or the scores' Setup (module docstring)."""
    graph, higher_is_better = direction(graph, higher_is_better, absolute)
    if graph.n_positions is not None:
        raise UserError("greedy selection is not position-aware; use --top-n or --threshold with --positions")
    imp = importance(scores, higher_is_better, absolute)
    readers_of = graph.readers_of
    edges_into = [[] for _ in graph.readers]
    for e, r in enumerate(graph.edge_dst):
        edges_into[r].append(e)
    keep = np.zeros(graph.n_edges, dtype=bool)
    heap, opened, reached = [], set(), set()

    def open_reader(r):
        if r not in opened:
            opened.add(r)
            for e in edges_into[r]:
                heapq.heappush(heap, (-imp[e], e))

    open_reader(graph.reader_index["logits"])
    while heap and keep.sum() < n:
        _, e = heapq.heappop(heap)
        keep[e] = True
        s = graph.edge_src[e]
        if s not in reached:
            reached.add(s)
            for r in readers_of[s]:
                open_reader(r)
    return keep


def prune(graph: Graph, in_circuit) -> np.ndarray:
    """Drop edges that cannot matter: from a node no kept path reaches from the input, or into a
    node with no kept path to the logits. Exact under corrupted-activation patching (a node whose
    inputs are all corrupted writes its corrupted output, which its out-of-circuit edges carry too)."""
    if graph.n_positions is not None:  # at the level of (node, position)
        from ..engine.positions import prune_positional
        return prune_positional(graph, in_circuit)
    m = graph.edge_mask_matrix(in_circuit)
    readers_of = graph.readers_of
    active = np.zeros(graph.n_sources, dtype=bool)
    active[0] = True
    for s in range(1, graph.n_sources):
        active[s] = bool((m[active][:, readers_of[s]]).any())
    useful_reader = np.zeros(graph.n_readers, dtype=bool)
    useful_reader[graph.reader_index["logits"]] = True
    for s in range(graph.n_sources - 1, -1, -1):
        if active[s] and (m[s] & useful_reader).any():
            useful_reader[readers_of[s]] = True
    keep = m & active[:, None] & useful_reader[None, :]
    return graph.edge_vector(keep)


def nodes_in_circuit(graph: Graph, in_circuit) -> set[str]:
    nodes = set()
    for e in np.flatnonzero(in_circuit):
        nodes.add(graph.sources[graph.edge_src[e]])
        nodes.add(graph.reader_owner[graph.edge_dst[e]])
    return nodes
