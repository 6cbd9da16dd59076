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
([N, S, H, P, P]), chunked over sources to bound memory; no extra forward or backward pass.

Fast path (the norm a LayerNorm or RMSNorm, models.NormAffine; the general path calls the model's
norm module): with c the norm's centering (identity for RMSNorm), gamma/beta its weights,

    W_q norm(x + delta) + b_q = (A c(x) + A c(delta)) / sigma(x + delta) + (W_q beta + b_q),
    A = W_q diag(gamma),  sigma(y)^2 = mean(c(y)^2) + eps = (|c x|^2 + 2 c x . c delta + |c delta|^2) / d + eps,

the same for keys. A head's delta is z_delta W_O, so A c(delta) = z_delta (c(W_O) A^T): the composed
[d_head, H d_head] map of each (source head, layer) replaces a d_model-wide projection per source,
about H_source * N * P / d_model times less work for the head sources (the embedding and MLPs, d
wide, are projected as they are). The same numbers up to rounding (tests/test_qk_fix.py).
"""

from __future__ import annotations

import torch

from ..core.nodes import parse_node
from ..engine.attention import causal_mask, head_writes, project, rotate

CHUNK_BYTES = 64 * 2**20  # per chunk of sources: the largest of the [.., S, ..] intermediates
FAST = True  # the norm's closed form where it is known (module docstring); False: always the norm module
HEAD_SPACE_TOKENS = 2  # composed head maps when a batch has more than this many tokens per d_head


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


def heads_fed(graph, reader: int) -> tuple[int, list[int]]:
    """(key/value head whose projection the slot uses, query heads whose pattern it changes)."""
    node, slot = parse_node(graph.reader_owner[reader]), graph.reader_slot[reader]
    group = graph.group_size
    if node.kind == "kv_head":  # a grouped k slot: every query head of the group
        return node.head, list(range(node.head * group, (node.head + 1) * group))
    return (node.head if slot == "q" else node.head // group), [node.head]


def _source_deltas(adapter, graph, delta, stage, n: int, p: int, head_space: bool = False):
    """Yields (first source, [N, P, s, d], None) groups of the upstream sources' (reference - clean)
    writes; with head_space, a layer's heads as (first, [N, P, H, d_head] before the output
    projection, their layer) instead."""
    d = adapter.d_model
    yield 0, delta.embed.float().expand(n, p, d).unsqueeze(2), None
    for up in graph.upstream(stage):
        if head_space:
            yield up.heads.start, delta.z[up.layer].float().expand(n, p, -1, -1), up.layer
        else:
            yield up.heads.start, head_writes(adapter, up.layer, delta.z[up.layer]).float().expand(n, p, -1, -1), None
        if up.mlp is not None:
            yield up.mlp, delta.mlp[up.layer].float().expand(n, p, d).unsqueeze(2), None


def _center(affine, t: torch.Tensor) -> torch.Tensor:
    return t - t.mean(-1, keepdim=True) if affine.centered else t


class ComposedMaps:
    """The fast path's composed maps c(W_O) A^T by (layer, source layer, first head, heads), kept for
    the next batch of a scoring call while they fit in `budget` bytes (else made again)."""

    def __init__(self, budget: int = 256 * 2**20):
        self.maps: dict = {}
        self.left = budget

    def get(self, key, make):
        if key in self.maps:
            return self.maps[key]
        value = make()
        size = sum(t.numel() * t.element_size() for t in value)
        if size <= self.left:
            self.maps[key] = value
            self.left -= size
        return value


class _AffineQK:
    """The fast path for one attention layer (module docstring): the attention scores of the clean
    residual x [N, P, d] (fp32) plus one upstream source's delta, per source, from the norm's closed
    form, built at the level of the [N, s, H, P, P] scores (never a [N, P, s, d] residual copy)."""

    def __init__(self, adapter, layer: int, affine, x: torch.Tensor, rotary, kv: int):
        w = adapter.heads(layer)
        n, p, d = x.shape
        self.affine, self.d, self.eps, self.kv = affine, d, affine.eps, kv
        wq, wk = w.q.float(), w.k.float()
        gamma = affine.weight.float().to(x.device)
        self.aq, self.ak = wq * gamma, wk * gamma  # A = W diag(gamma): [H, dh, d], [kv, dh, d]
        h, dh = wq.shape[:2]
        self.h, self.group = h, h // kv
        def bias(weight, own):  # W beta + b: [heads, dh], zeros when the norm and the projection have none
            out = torch.zeros(weight.shape[:2], dtype=torch.float32, device=x.device)
            if affine.bias is not None:
                out = out + weight @ affine.bias.float()
            return out if own is None else out + own.float()

        bq, bk = bias(wq, w.q_bias), bias(wk, w.k_bias)
        self.rot = (lambda t: t) if rotary is None else \
            (lambda t: rotate(t.reshape(n, p, -1, t.shape[-1]), *rotary).view(t.shape))
        self.cx = _center(affine, x)
        self.ss = self.cx.pow(2).sum(-1)  # |c x|^2 [N, P]
        uq = self.rot(torch.einsum("npm,hcm->nphc", self.cx, self.aq))  # A c(x), rotated
        uk = self.rot(torch.einsum("npm,hcm->nphc", self.cx, self.ak))
        rbq = self.rot(bq.expand(n, p, h, dh).contiguous())  # the bias, rotated
        rbk = self.rot(bk.expand(n, p, kv, dh).contiguous())
        sigma = torch.sqrt(self.ss / d + self.eps)  # [N, P]
        q0 = uq / sigma[..., None, None] + rbq  # the clean (rotated) queries and keys
        k0 = uk / sigma[..., None, None] + rbk
        self.kh = k0[:, :, torch.arange(h, device=x.device) // self.group]  # the key each query head reads
        self.q0g = q0.view(n, p, kv, self.group, dh)
        # score terms shared by every source: q side (A c(x) and the bias against the clean keys) and
        # k side (the clean queries against A c(x) and the bias of the keys), each [N, H, P, P]
        self.squ = torch.einsum("nihc,njhc->nhij", uq, self.kh)
        self.sqb = torch.einsum("nihc,njhc->nhij", rbq, self.kh)
        self.sku = self._grouped("nikgc,njkc->nkgij", uk)
        self.skb = self._grouped("nikgc,njkc->nkgij", rbk)
        self.clean_scores = self.squ / sigma[:, None, :, None] + self.sqb  # = q0 . k0

    def _grouped(self, eq: str, keys: torch.Tensor) -> torch.Tensor:
        out = torch.einsum(eq, self.q0g, keys)  # [N, (s,) kv, group, P, P]
        return out.reshape(*out.shape[:-4], self.h, *out.shape[-2:])

    def sources(self, dl: torch.Tensor, head_layer: int | None, w_out: torch.Tensor | None, composed, key):
        """Scores with each source's delta in the query input and in the key input, [N, s, H, P, P]
        each. dl: d-wide deltas [N, P, s, d] (head_layer None), or a layer's head deltas before the
        output projection [N, P, s, dh] with their output maps w_out [s, dh, d]."""
        if head_layer is None:
            cd = _center(self.affine, dl)
            dq = torch.einsum("npsm,hcm->npshc", cd, self.aq)
            dk = torch.einsum("npsm,hcm->npshc", cd, self.ak)
            cross = torch.einsum("npm,npsm->nps", self.cx, cd)
            self_sq = cd.pow(2).sum(-1)
        else:  # A c(delta) = dz (c(W_O) A^T); c x . c delta and |c delta|^2 in head space too
            def make():
                cwo = _center(self.affine, w_out)
                return (torch.einsum("scm,hem->sche", cwo, self.aq), torch.einsum("scm,hem->sche", cwo, self.ak),
                        cwo, torch.einsum("scm,sem->sce", cwo, cwo))
            mq, mk, cwo, gram = composed.get(key, make)
            dq = torch.einsum("npsc,sche->npshe", dl, mq)
            dk = torch.einsum("npsc,sche->npshe", dl, mk)
            cross = (dl * torch.einsum("npm,scm->npsc", self.cx, cwo)).sum(-1)
            self_sq = (torch.einsum("npsc,sce->npse", dl, gram) * dl).sum(-1)
        sigma = torch.sqrt((self.ss.unsqueeze(2) + 2 * cross + self_sq) / self.d + self.eps).transpose(1, 2)  # [N, s, P]
        dq, dk = self.rot(dq), self.rot(dk)
        sq = (self.squ.unsqueeze(1) + torch.einsum("nishc,njhc->nshij", dq, self.kh)) / sigma[:, :, None, :, None] \
            + self.sqb.unsqueeze(1)
        sk = (self.sku.unsqueeze(1) + self._grouped("nikgc,njskc->nskgij", dk)) / sigma[:, :, None, None, :] \
            + self.skb.unsqueeze(1)
        return sq, sk


def _softmax(adapter, layer: int, scores: torch.Tensor, window) -> torch.Tensor:
    p = scores.shape[-1]
    scores = scores * adapter.attn_scale(layer) + causal_mask(p, window, scores.dtype, scores.device)
    return torch.softmax(scores, dim=-1)


def _patterns(adapter, layer: int, q, k, rotary, p: int, window) -> torch.Tensor:
    """Attention patterns for q [N, P, S, H, dh] against k [N, P, S, H, dh] (each query head with its
    own key input) -> [N, S, H, P, P], fp32."""
    n, _, s, h, dh = q.shape
    if rotary is not None:
        cos, sin = rotary
        q = rotate(q.reshape(n, p, s * h, dh), cos, sin).view(n, p, s, h, dh)
        k = rotate(k.reshape(n, p, s * h, dh), cos, sin).view(n, p, s, h, dh)
    return _softmax(adapter, layer, torch.einsum("nishc,njshc->nshij", q, k), window)


@torch.no_grad()
def add_qk_scores(setup, clean_resid: list[torch.Tensor], delta, grads: list[torch.Tensor | None],
                  out: torch.Tensor, composed: ComposedMaps | None = None) -> None:
    """Adds the QK-fix score (summed over the batch's examples) of every edge into a q or k slot to
    out [n_sources, n_readers]. clean_resid: the clean run's residual per stage; delta: reference -
    clean per source; grads: dm/dA per layer (PatternGradients.grads). composed: the fast path's
    composed head maps, kept by the caller across the batches of one scoring call (None: this call's)."""
    adapter, graph = setup.adapter, setup.graph
    composed = ComposedMaps() if composed is None else composed
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
        affine = adapter.attn_norm_affine(layer) if FAST else None
        if affine is not None:
            fast = _AffineQK(adapter, layer, affine, x, rotary, kv)
            clean = _softmax(adapter, layer, fast.clean_scores, window)  # [N, H, P, P]
        else:
            xn = adapter.attn_norm(layer, x.to(adapter.dtype)).float()
            q0, k0 = project(xn, wq, bq), project(xn, wk, bk)  # [N, P, H, dh], [N, P, kv, dh]
            kh = k0[:, :, torch.arange(h_all, device=x.device) // group]  # the key each query head reads
            clean = _patterns(adapter, layer, q0.unsqueeze(2), kh.unsqueeze(2), rotary, p, window)[:, 0]
        grad = grads[layer].reshape(n, h_all, p, p)  # [N, kv, group, P, P] -> query-head order
        per_q = torch.zeros(stage.n_upstream, h_all, dtype=torch.float32, device=x.device)  # q slot of head h
        per_k = torch.zeros(stage.n_upstream, h_all, dtype=torch.float32, device=x.device)  # head h's key
        # per source: [N, P, d] residual copy, q/k projections and [N, H, P, P] patterns, 3 of them
        per_source = 4 * (n * p * d + n * p * (h_all + kv) * w.q.shape[1] + 3 * n * h_all * p * p)
        chunk = max(1, CHUNK_BYTES // per_source)
        # head deltas through the composed maps only where that is less work than projecting them
        # d-wide (each map costs about the projection of d_head tokens; measured slower at 64 tokens)
        head_space = affine is not None and n * p > HEAD_SPACE_TOKENS * w.q.shape[1]
        for first, deltas, heads_of in _source_deltas(adapter, graph, delta, stage, n, p, head_space):
            for c0 in range(0, deltas.shape[2], chunk):
                dl = deltas[:, :, c0:c0 + chunk]
                s = dl.shape[2]
                if affine is not None:
                    w_out = None if heads_of is None else adapter.heads(heads_of).out.float()[c0:c0 + chunk]
                    sq, sk = fast.sources(dl, heads_of, w_out, composed, (layer, heads_of, c0, s))
                    a_q, a_k = _softmax(adapter, layer, sq, window), _softmax(adapter, layer, sk, window)
                else:
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
            _, heads = heads_fed(graph, r)
            src = per_q if graph.reader_slot[r] == "q" else per_k
            out[:stage.n_upstream, r] += src[:, heads].sum(1)
