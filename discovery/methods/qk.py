"""The QK fix for gradient methods (AtP*, Kramár et al. 2024): query and key edges through the exact
attention pattern.

A query or key input acts on the metric only through its head's attention pattern A = softmax(scores).
Where attention is saturated (one key takes nearly all the weight) the softmax's gradient is ~0, so the
linear estimate delta . dm/dx of an edge into a q or k slot is ~0 even when switching that edge moves
the whole pattern. The fix keeps the gradient where it is informative (at the pattern) and computes
the pattern change exactly. For the edge s -> r, r a q or k slot of an attention layer L:

    score(s -> r) = sum over examples, heads h fed by r, query i, key j of
                    G[h, i, j] * (A'_s[h, i, j] - A[h, i, j])

- A: the clean pattern of head h at layer L. A'_s: the pattern with source s's delta (reference -
  clean output of s, at every position) added to that slot's input only, through the layer's norm,
  the q or k projection (rotary included) and the softmax; the other slot keeps its clean input.
- G: dm/dA, the gradient of the metric with respect to the pattern at the clean run, whatever the
  method (EAP, EAP-IG, clean-corrupted): see input_path.py for why not the path average.
- Heads fed by r: a q slot feeds its query head; a k slot its key/value head's whole group of query
  heads (`a1.kv0<k>`), or one query head when the graph names k slots per query head (`a1.h2<k>`, the
  input of that head's key only).

v slots, MLPs and the logits keep the method's linear estimate. The pattern change is exact, the
rest is first order in the pattern, so at saturation the score follows the exact single-edge patch;
with tiny deltas and soft attention it equals the plain linear estimate to first order.

Cost: per attention layer, every upstream source's delta goes through the norm and the q and k
projections ([N, P, S, d] -> [N, P, S, H + kv, d_head]) and one masked softmax per source and head
([N, S, H, P, P]), chunked over sources to bound memory; about the work of (q, k) projections for S
extra copies of the residual, no extra forward or backward pass.
"""

from __future__ import annotations

import torch

from ..patching import _causal_mask, _project, _rotate, head_writes, source_rows

CHUNK_BYTES = 64 * 2**20  # per chunk of sources: the largest of the [.., S, ..] intermediates


class PatternGradients:
    """A pattern_hook for patching.run: adds dm/dA of every layer into `grads` during backward (fp32,
    [N, kv, group, P, P] per layer)."""

    def __init__(self, n_layers: int):
        self.grads: list[torch.Tensor | None] = [None] * n_layers

    def __call__(self, layer: int, pattern: torch.Tensor) -> None:
        if pattern.requires_grad:
            pattern.register_hook(lambda g, layer=layer: self._add(layer, g))

    def _add(self, layer: int, grad: torch.Tensor) -> None:
        g = grad.detach().float()
        self.grads[layer] = g if self.grads[layer] is None else self.grads[layer] + g


def qk_readers(graph) -> list[int]:
    """Reader indices of every q and k slot."""
    return [r for r, slot in enumerate(graph.reader_slot) if slot in ("q", "k")]


def _heads_fed(graph, reader: int) -> tuple[int, list[int]]:
    """(key/value head whose projection the slot uses, query heads whose pattern it changes)."""
    owner, slot = graph.reader_owner[reader], graph.reader_slot[reader]
    head = owner.split(".", 1)[1]
    group = graph.n_heads // graph.n_kv_heads
    if head.startswith("kv"):  # a grouped k slot: every query head of the group
        g = int(head[2:])
        return g, list(range(g * group, (g + 1) * group))
    h = int(head[1:])
    return (h if slot == "q" else h // group), [h]


def _source_deltas(adapter, graph, delta, stage, n: int, p: int):
    """Yields (first source, [N, P, s, d]) chunks of the upstream sources' (reference - clean) writes."""
    d = adapter.d_model
    yield 0, delta.embed.float().expand(n, p, d).unsqueeze(2)
    for layer in range(graph.n_layers):
        h0, h1 = source_rows(graph, layer)
        if h0 >= stage.n_upstream:
            return
        yield h0, head_writes(adapter, layer, delta.z[layer]).float().expand(n, p, -1, -1)
        if h1 < stage.n_upstream:
            yield h1, delta.mlp[layer].float().expand(n, p, d).unsqueeze(2)


def _patterns(adapter, layer: int, q, k, rotary, p: int, window) -> torch.Tensor:
    """Attention patterns for q [N, P, S, H, dh] against k [N, P, S, H, dh] (each query head with its
    own key input) -> [N, S, H, P, P], fp32."""
    n, _, s, h, dh = q.shape
    if rotary is not None:
        cos, sin = rotary
        q = _rotate(q.reshape(n, p, s * h, dh), cos, sin).view(n, p, s, h, dh)
        k = _rotate(k.reshape(n, p, s * h, dh), cos, sin).view(n, p, s, h, dh)
    scores = torch.einsum("nishc,njshc->nshij", q, k) * adapter.attn_scale(layer)
    scores = scores + _causal_mask(p, window, scores.dtype, scores.device)
    return torch.softmax(scores, dim=-1)


@torch.no_grad()
def add_qk_scores(setup, clean_resid: list[torch.Tensor], delta, grads: list[torch.Tensor | None],
                  out: torch.Tensor) -> None:
    """Adds the QK-fix score (summed over the batch's examples) of every edge into a q or k slot to
    out [n_sources, n_readers]. clean_resid: the clean run's residual per stage; delta: reference -
    clean per source; grads: dm/dA per layer (PatternGradients.grads)."""
    adapter, graph = setup.adapter, setup.graph
    h_all, kv = graph.n_heads, graph.n_kv_heads
    group = h_all // kv
    readers = qk_readers(graph)
    for stage_idx, stage in enumerate(graph.stages):
        if stage.kind != "attn" or grads[stage.layer] is None:
            continue
        layer = stage.layer
        x = clean_resid[stage_idx].float()
        n, p, d = x.shape
        w = adapter.heads(layer)
        wq, wk = w.q.float(), w.k.float()
        bq = None if w.q_bias is None else w.q_bias.float()
        bk = None if w.k_bias is None else w.k_bias.float()
        rotary = adapter.rotary(x, torch.arange(p, device=x.device)[None].expand(n, p))
        rotary = None if rotary is None else tuple(t.float() for t in rotary)
        window = adapter.sliding_window(layer)
        xn = adapter.attn_norm(layer, x.to(adapter.dtype)).float()
        q0 = _project(xn, wq, bq)  # [N, P, H, dh]
        k0 = _project(xn, wk, bk)  # [N, P, kv, dh]
        kh = k0[:, :, torch.arange(h_all, device=x.device) // group]  # the key each query head reads
        clean = _patterns(adapter, layer, q0.unsqueeze(2), kh.unsqueeze(2), rotary, p, window)[:, 0]  # [N, H, P, P]
        grad = grads[layer].reshape(n, h_all, p, p)  # [N, kv, group, P, P] -> query-head order
        per_q = torch.zeros(stage.n_upstream, h_all, dtype=torch.float32, device=x.device)  # q slot of head h
        per_k = torch.zeros(stage.n_upstream, h_all, dtype=torch.float32, device=x.device)  # head h's key
        # per source: [N, P, d] residual copy, q/k projections and [N, H, P, P] patterns, 3 of them
        per_source = 4 * (n * p * d + n * p * (h_all + kv) * w.q.shape[1] + 3 * n * h_all * p * p)
        chunk = max(1, CHUNK_BYTES // per_source)
        for first, deltas in _source_deltas(adapter, graph, delta, stage, n, p):
            for c0 in range(0, deltas.shape[2], chunk):
                dl = deltas[:, :, c0:c0 + chunk]
                s = dl.shape[2]
                yn = adapter.attn_norm(layer, (x.unsqueeze(2) + dl).to(adapter.dtype)).float()  # [N, P, s, d]
                qs = torch.einsum("npsm,hcm->npshc", yn, wq) + (0 if bq is None else bq)
                ks = torch.einsum("npsm,hcm->npshc", yn, wk) + (0 if bk is None else bk)
                ks = ks[:, :, :, torch.arange(h_all, device=x.device) // group]
                a_q = _patterns(adapter, layer, qs, kh.unsqueeze(2).expand(-1, -1, s, -1, -1), rotary, p, window)
                a_k = _patterns(adapter, layer, q0.unsqueeze(2).expand(-1, -1, s, -1, -1), ks, rotary, p, window)
                rows = slice(first + c0, first + c0 + s)
                per_q[rows] += torch.einsum("nhij,nshij->sh", grad, a_q - clean.unsqueeze(1))
                per_k[rows] += torch.einsum("nhij,nshij->sh", grad, a_k - clean.unsqueeze(1))
        for r in readers:
            if not stage.start <= r < stage.stop:
                continue
            _, heads = _heads_fed(graph, r)
            src = per_q if graph.reader_slot[r] == "q" else per_k
            out[:stage.n_upstream, r] += src[:, heads].sum(1)
