"""Influence, pruning and the replacement/completeness scores of an attribution graph.

All on the adjacency in targets x sources form R [n_features + n_logits, n_sources] (attribution.py);
as a square matrix over all nodes (features, errors, tokens, logits) it is circuit-tracer's A[t, s].

- Normalised matrix: N = |A| with each row divided by its sum (rows without edges stay zero).
- Logit weights w: each logit node's probability, zero elsewhere.
- Influence of node s: I_s = (w N + w N^2 + ...)_s, the probability-weighted share of the logits'
  normalised inputs that reach s over paths of any length (N is nilpotent: the graph is acyclic).
- Node pruning (threshold tau_n, default 0.8): order nodes by influence, keep the smallest prefix
  whose cumulative influence reaches tau_n of the total (ties at the cut kept); tokens and logits are
  always kept. Edge pruning (tau_e, default 0.98): on the node-pruned matrix N', an edge's score is
  N'[t, s] (I'_t + w_t) with I' the influence recomputed on N'; keep the smallest set of edges
  whose scores reach tau_e of the total. Then, until nothing changes, drop features and errors with
  no kept outgoing edge and features with no kept incoming edge (and their edges).
  `cumulative` is each node's cumulative influence share in that order (its position in the ranking).
- Replacement score: I(tokens) / (I(tokens) + I(errors)). Completeness score: the mean over nodes,
  weighted by I + w, of the fraction of each node's normalised input that does not come from errors.
These are circuit-tracer's definitions (its graph.py), so the scores are comparable with its graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def normalize(rows: torch.Tensor) -> torch.Tensor:
    a = rows.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def influence(norm: torch.Tensor, n_features: int, logit_probs: torch.Tensor, max_iter: int = 10_000) -> torch.Tensor:
    """I over the sources [n_sources] (logits have none) from a normalised R (features rows first)."""
    current = logit_probs.to(norm.dtype) @ norm[n_features:]
    total = current.clone()
    for _ in range(max_iter):
        current = current[:n_features] @ norm[:n_features]
        if not bool(current.any()):
            return total
        total += current
    raise RuntimeError("influence did not converge: the adjacency is not acyclic")


def find_threshold(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The score at which the descending cumulative sum first reaches `fraction` of the total."""
    s = torch.sort(scores.flatten(), descending=True).values
    cum = torch.cumsum(s, 0) / s.sum()
    i = min(int(torch.searchsorted(cum, torch.tensor(fraction, dtype=cum.dtype))), len(s) - 1)
    return s[i]


def partial_influences(rows: torch.Tensor, logit_probs: torch.Tensor, row_nodes: torch.Tensor, n_nodes: int,
                       max_iter: int = 128) -> torch.Tensor:
    """Influence over all n_nodes from the rows computed so far (row i is node row_nodes[i]), as
    circuit-tracer ranks features while it attributes under a feature cap."""
    norm = normalize(rows)
    n_cols = rows.shape[1]
    prod = torch.zeros(n_nodes)
    prod[-len(logit_probs):] = logit_probs
    total = torch.zeros(n_nodes)
    for _ in range(max_iter):
        nxt = torch.zeros(n_nodes)
        nxt[:n_cols] = prod[row_nodes] @ norm
        prod = nxt
        if not bool(prod.any()):
            return total
        total += prod
    raise RuntimeError("partial influences did not converge")


@dataclass
class Pruned:
    node_mask: torch.Tensor  # [n_nodes] bool (features, errors, tokens, logits)
    edge_mask: torch.Tensor  # [n_features + n_logits, n_sources] bool
    influence: torch.Tensor  # [n_nodes] each node's influence I (logits: 0)
    cumulative: torch.Tensor  # [n_nodes] cumulative influence share at the node's rank


def prune(graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    for name, t in (("node", node_threshold), ("edge", edge_threshold)):
        if not 0.0 <= t <= 1.0:
            from ..core.errors import UserError

            raise UserError(f"the {name} threshold must be between 0 and 1, not {t}")
    nf, nl, ns, npos = graph.n_features, graph.n_logits, graph.n_sources, graph.n_pos
    probs = graph.logit_probs.float()
    R = graph.adjacency
    infl = torch.cat([influence(normalize(R), nf, probs), torch.zeros(nl)])
    node_mask = infl >= find_threshold(infl, node_threshold)
    node_mask[-nl - npos:] = True
    row_nodes = torch.cat([torch.arange(nf), torch.arange(ns, ns + nl)])
    pruned = R.clone()
    pruned[~node_mask[row_nodes]] = 0
    pruned[:, ~node_mask[:ns]] = 0
    norm_p = normalize(pruned)
    infl_p = influence(norm_p, nf, probs)
    row_weight = torch.cat([infl_p[:nf], probs])
    scores = norm_p * row_weight[:, None]
    edge_mask = scores >= find_threshold(scores, edge_threshold)
    n_fe = ns - npos  # features and errors: must have an outgoing edge
    while True:
        old = node_mask.clone()
        edge_mask[~node_mask[row_nodes]] = False
        edge_mask[:, ~node_mask[:ns]] = False
        node_mask[:n_fe] &= edge_mask[:, :n_fe].any(0)
        node_mask[:nf] &= edge_mask[:nf].any(1)
        if bool((old == node_mask).all()):
            break
    order = torch.sort(infl, descending=True)
    cumulative = torch.zeros_like(infl)
    cumulative[order.indices] = torch.cumsum(order.values, 0) / order.values.sum()
    return Pruned(node_mask, edge_mask, infl, cumulative)


def graph_scores(graph) -> tuple[float, float]:
    """(replacement score, completeness score) as defined in the module docstring."""
    nf, nl, ns, npos, L = graph.n_features, graph.n_logits, graph.n_sources, graph.n_pos, graph.n_layers
    probs = graph.logit_probs.float()
    norm = normalize(graph.adjacency)
    infl = influence(norm, nf, probs)
    err = slice(nf, nf + L * npos)
    tok = slice(nf + L * npos, ns)
    t, e = infl[tok].sum(), infl[err].sum()
    replacement = t / (t + e) if float(t + e) > 0 else torch.tensor(1.0)
    non_err = torch.ones(ns + nl)
    row_non_err = 1 - norm[:, err].sum(1)
    non_err[:nf] = row_non_err[:nf]
    non_err[ns:] = row_non_err[nf:]
    out_infl = torch.cat([infl, probs])
    completeness = (non_err * out_infl).sum() / out_infl.sum()
    return float(replacement), float(completeness)
