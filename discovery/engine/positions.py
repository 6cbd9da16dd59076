"""Position-aware edges (Haklay et al. 2025, "Position-aware Automatic Circuit Discovery"; PEAP).

For a task whose rows share one token layout (every clean and corrupted prompt P tokens long), an edge
of the graph (discovery/core/graph.py) exists once per pair (source position -> destination position) that
causal attention allows. The residual stream at position p carries only what was written at p, and
attention is the only thing that moves information between positions, so:

- an edge into a q input, an MLP input or the logits stays at its position: `s[p]->r[p]`: the reader at
  position p reads source s's write at p. The logits reader exists at the last position only (P - 1,
  the one the metric reads);
- an edge into a k or v input of head h is `s[i]->aL.hH<k>[j]` for key position i <= j (and within the
  layer's sliding window, if it has one): the key (value) that head h's query at position j uses for
  key position i is computed from the residual at i, in which s's write at i carries its live value
  (edge in) or its reference value (edge out). Switching this one edge changes what the query at j
  sees at key position i only; queries at other positions still see the live key at i.

`src_pos` is where the source writes, `dst_pos` where the reader's node computes the output this edge
feeds. A positional circuit is evaluated by that definition: exact patching of a positional edge is
the metric change of switching just that entry. The sum of a base edge's positional EAP scores over
all its pairs is its non-positional EAP score (the gradient at a reader input is the sum over
positions, and for k/v over the query positions that read it); tests/test_positions.py checks it.

Layout: masks and score matrices are dense [n_sources, n_readers, P (src_pos), P (dst_pos)] tensors
(`valid` marks the pairs that exist); positional edges are index arrays into them, ordered by base
edge (reader, then source), then src_pos, then dst_pos. Nothing per edge is a Python object until a
circuit file is written.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.graph import Graph
from ..core.positional_graph import PositionalGraph, aligned_length  # noqa: F401 (re-exported)
from .attention import causal_mask, head_writes, rotate


def positional_graph(adapter, base: Graph, task, names: list[str] | None = None) -> PositionalGraph:
    windows = [adapter.sliding_window(layer) for layer in range(base.n_layers)]
    return PositionalGraph(base, aligned_length(task), windows, names)


# --- selection ------------------------------------------------------------------------------------

def prune_positional(graph: PositionalGraph, in_circuit) -> np.ndarray:
    """selection.prune at the level of (node, position): drop edges from a node position that no kept
    path reaches from the input, or into a node position with no kept path to the logits (at P - 1)."""
    readers_of = graph.readers_of  # per source, the reader slots whose values it consumes
    m = graph.edge_mask_matrix(in_circuit)  # [S, R, P, P]
    s_count, r_count, p = m.shape[0], m.shape[1], graph.n_positions
    active = np.zeros((s_count, p), dtype=bool)
    active[0] = True  # the input, at every position
    for s in range(1, s_count):
        rs = readers_of[s]
        if rs:
            active[s] = (m[:, rs] & active[:, None, :, None]).any(axis=(0, 1, 2))
    useful = np.zeros((r_count, p), dtype=bool)  # reader at dst_pos feeds a node position with a path to the logits
    useful[graph.reader_index["logits"], p - 1] = True
    for s in range(s_count - 1, 0, -1):
        rs = readers_of[s]
        node_useful = active[s] & (m[s] & useful[:, None, :]).any(axis=(0, 2))  # [P] at the source's position
        if rs:
            useful[rs] |= node_useful[None, :]
    keep = m & active[:, None, :, None] & useful[None, :, None, :]
    return graph.edge_vector(keep)


# --- the patched forward --------------------------------------------------------------------------

def stage_inputs(adapter, graph: PositionalGraph, stage, off, live_nonzero, resid, deltas):
    """Reader inputs of a stage under a positional mask off [N|1, S, R, P, P] (1 = edge out).

    Returns (local, cross): local [N, P, readers, d], each reader at its own position (the diagonal of
    off; what q, MLP and logit readers see); cross [N, Pq, Pk, kv readers, d] for an attention stage (the
    k then v readers: at query position j, key position i), else None."""
    emb, zs, mlps = deltas
    n, p, d = resid.shape
    sl = slice(stage.start, stage.stop)
    o = off[:, :, sl].expand(n, *off.shape[1:2], stage.stop - stage.start, p, p)
    diag = o.diagonal(dim1=-2, dim2=-1)  # [N, S, R, P]
    kv_first = graph.n_heads if stage.kind == "attn" else None
    cross_off = o[:, :, kv_first:] if kv_first is not None else None  # [N, S, Rkv, Pk, Pq]
    local = resid.unsqueeze(2).expand(n, p, stage.stop - stage.start, d)
    cross = None
    if cross_off is not None:
        cross = resid[:, None, :, None, :].expand(n, p, p, cross_off.shape[2], d)
    chunks = []
    if live_nonzero[0, sl].any():
        chunks.append((slice(0, 1), emb.expand(n, p, d).unsqueeze(2)))
    for up in graph.upstream(stage):
        if live_nonzero[up.heads, sl].any():
            chunks.append((up.heads, head_writes(adapter, up.layer, zs[up.layer])))
        if up.mlp is not None and live_nonzero[up.mlp, sl].any():
            chunks.append((slice(up.mlp, up.mlp + 1), mlps[up.layer].unsqueeze(2)))
    for rows, delta in chunks:  # delta [N, P, S', d] = live - reference
        local = local - torch.einsum("npsm,nsrp->nprm", delta, diag[:, rows])
        if cross is not None:
            cross = cross - torch.einsum("nism,nsrij->njirm", delta, cross_off[:, rows])
    return local, cross


def project_per_query(adapter, graph, layer: int, x: torch.Tensor):
    """Normalised k/v inputs x [N, Pq, Pk, 2 * kv readers, d] -> k, v [N, Pq, Pk, kv readers, d_head]."""
    w = adapter.heads(layer)
    idx = torch.as_tensor(graph.kv_weight_heads(), device=x.device)
    r = len(idx)
    out = []
    for weight, bias, part in ((w.k, w.k_bias, x[:, :, :, :r]), (w.v, w.v_bias, x[:, :, :, r:])):
        t = torch.einsum("njirm,rkm->njirk", part, weight[idx])
        out.append(t + bias[idx] if bias is not None else t)
    return out


def attend_per_query(adapter, layer: int, q, k, v, rotary) -> torch.Tensor:
    """Attention where each query position has its own keys and values: q [N, P, H, d_head], k and v
    [N, Pq, Pk, kv, d_head] (kv key/value heads, or one per query head). Returns z [N, P, H, d_head]."""
    n, p, h, dh = q.shape
    kv = k.shape[3]
    if rotary is not None:
        cos, sin = rotary
        q = rotate(q, cos, sin)
        def per_query(c):  # cos/sin [N | 1, Pk, rd] -> [N * Pq, Pk, rd]: (N, Pq) as the batch
            return c.expand(n, *c.shape[1:]).unsqueeze(1).expand(n, p, *c.shape[1:]).reshape(n * p, *c.shape[1:])

        k = rotate(k.expand(n, p, p, kv, dh).reshape(n * p, p, kv, dh), per_query(cos), per_query(sin))
        k = k.view(n, p, p, kv, dh)
    qg = q.view(n, p, kv, h // kv, dh)
    scores = torch.einsum("njgmd,njigd->ngmji", qg, k) * adapter.attn_scale(layer)
    scores = scores + causal_mask(p, adapter.sliding_window(layer), scores.dtype, scores.device)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return torch.einsum("ngmji,njigd->njgmd", pattern, v.expand(n, p, p, kv, dh)).reshape(n, p, h, dh)


# --- gradients ------------------------------------------------------------------------------------

def cross_reader_gradients(norm, x: torch.Tensor):
    """For an unpatched stage read as x [N, P, d]: gradient at per-(query, key position) k/v projection
    outputs [N, Pq, Pk, R, d_head] -> gradient at those readers' inputs [N, Pq, Pk, R, d] (through the
    head's projection weights [R, d_head, d], then the norm's VJP at x[key position])."""
    _, vjp = torch.func.vjp(norm, x.detach())
    per_reader = torch.func.vmap(lambda c: vjp(c)[0], in_dims=2, out_dims=2)  # over R of [N, Pk, R, d]
    per_query = torch.func.vmap(per_reader, in_dims=1, out_dims=1)  # over Pq

    def reader_grad(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        g_norm = torch.einsum("njirk,rkm->njirm", grad_out, weight.to(grad_out.dtype))
        return per_query(g_norm)

    return reader_grad


def positional_score_hook(setup, delta, scores: torch.Tensor, weight: float):
    """edge_score_hook for a positional graph: scores [S, R, P (src), P (dst)] += weight *
    sum_n delta_source[n, src_pos] . grad_reader, where the gradient is the reader's at dst_pos (q, MLP,
    logits: grad [N, P, r, d], src_pos = dst_pos) or at (query dst_pos, key src_pos) (k/v:
    grad [N, Pq, Pk, r, d]). Accumulated in fp32."""
    graph, adapter = setup.graph, setup.adapter

    def hook(stage, first, grad):
        g = grad.float()
        n, p = g.shape[0], g.shape[1]
        r = g.shape[-2]
        block = scores[:stage.n_upstream, stage.start + first:stage.start + first + r]
        chunks = [(slice(0, 1), delta.embed.float().expand(n, p, -1).unsqueeze(2))]
        for up in graph.upstream(stage):
            chunks.append((up.heads, head_writes(adapter, up.layer, delta.z[up.layer].float().expand(n, p, -1, -1))))
            if up.mlp is not None:
                chunks.append((slice(up.mlp, up.mlp + 1), delta.mlp[up.layer].float().expand(n, p, -1).unsqueeze(2)))
        for rows, d in chunks:
            if g.dim() == 4:
                block[rows].diagonal(dim1=-2, dim2=-1).add_(weight * torch.einsum("npsm,nprm->srp", d, g))
            else:
                block[rows] += weight * torch.einsum("nism,njirm->srij", d, g)

    return hook
