"""Attention of the patching core, one layer at a time, through the model's own weights: q/k/v
projections (shared inputs or one input per reader), rotary embeddings, the causal (and sliding-window)
mask, grouped-query attention natively (query head h = g * group + j shares key/value head g), each
head's write to the residual stream and the attention output.

Shapes: x [N, P, d] (one input for all heads) or [N, P, heads, d] (one per head); q [N, P, H, d_head];
k and v [N, P, kv_heads, d_head]; head outputs z [N, P, H, d_head] before the output projection."""

from __future__ import annotations

from typing import Callable

import torch

from ..model.adapters import Adapter

def project(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x: [N, P, d] (shared by all heads) or [N, P, heads, d] (one input per head) -> [N, P, heads, d_head]."""
    heads, d_head, d = weight.shape
    if x.dim() == 3:
        out = (x @ weight.reshape(heads * d_head, d).T).view(*x.shape[:2], heads, d_head)
    else:
        out = torch.einsum("nphm,hkm->nphk", x, weight)
    return out + bias if bias is not None else out


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the first cos.shape[-1] dims of x [N, P, heads, d_head] (partial RoPE too)."""
    rd = cos.shape[-1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    x_rot, x_pass = x[..., :rd], x[..., rd:]
    half = rd // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


def causal_mask(p: int, window: int | None, dtype, device) -> torch.Tensor:
    i = torch.arange(p, device=device)
    allowed = i[None, :] <= i[:, None]
    if window is not None:
        allowed &= i[None, :] > i[:, None] - window
    return torch.zeros(p, p, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)


def project_qkv(adapter: Adapter, layer: int, xq, xk, xv, kv_heads: list[int] | None = None):
    """q [N, P, H, d_head], k and v [N, P, kv_heads, d_head] from normalised inputs (shared or per slot).

    kv_heads: with per-slot inputs xk/xv [N, P, R, d], the model key/value head whose projection each
    of the R inputs goes through (per-query-head k/v readers of a grouped-query model: R = H, each
    head's input through its group's weights); None: R is the model's key/value heads."""
    w = adapter.heads(layer)
    k, kb, v, vb = w.k, w.k_bias, w.v, w.v_bias
    if kv_heads is not None and len(kv_heads) != k.shape[0]:
        idx = torch.as_tensor(kv_heads, device=k.device)
        k, v = k[idx], v[idx]
        kb, vb = (None if b is None else b[idx] for b in (kb, vb))
    return project(xq, w.q, w.q_bias), project(xk, k, kb), project(xv, v, vb)


def per_query_head(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Keys or values [N, P, kv_heads, d_head] repeated for each query head of a group: [N, P, H, d_head]."""
    n, p, kv, dh = t.shape
    return t.unsqueeze(3).expand(n, p, kv, n_heads // kv, dh).reshape(n, p, n_heads, dh)


PatternHook = Callable[[int, torch.Tensor], None]


def attend(adapter: Adapter, layer: int, q, k, v, rotary, pattern_hook: PatternHook | None = None) -> torch.Tensor:
    """Head outputs z [N, P, H, d_head] (before the output projection). pattern_hook(layer, pattern)
    sees the fp32 attention pattern [N, kv_heads, group, P (query), P (key)] (query head h = g * group + j)."""
    if rotary is not None:
        q, k = rotate(q, *rotary), rotate(k, *rotary)
    n, p, h, dh = q.shape
    kv = k.shape[2]
    # Grouped-query attention natively: query heads h = g * group + j share key/value head g.
    qg = q.view(n, p, kv, h // kv, dh).permute(0, 2, 3, 1, 4)  # [N, kv, group, P, dh]
    kg = k.permute(0, 2, 3, 1).unsqueeze(2)  # [N, kv, 1, dh, P]
    vg = v.permute(0, 2, 1, 3).unsqueeze(2)  # [N, kv, 1, P, dh]
    scores = (qg @ kg) * adapter.attn_scale(layer)
    scores = scores + causal_mask(p, adapter.sliding_window(layer), scores.dtype, scores.device)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32)
    if pattern_hook is not None:
        pattern_hook(layer, pattern)
    pattern = pattern.to(v.dtype)
    return (pattern @ vg).permute(0, 3, 1, 2, 4).reshape(n, p, h, dh)


def head_writes(adapter: Adapter, layer: int, z: torch.Tensor) -> torch.Tensor:
    """Per-head writes to the residual stream [N, P, H, d] (one layer at a time, transiently)."""
    return torch.einsum("nphk,hkm->nphm", z, adapter.heads(layer).out.to(z.dtype))


def attention_output(adapter: Adapter, layer: int, z: torch.Tensor) -> torch.Tensor:
    w = adapter.heads(layer)
    h, dh, d = w.out.shape
    out = z.reshape(*z.shape[:2], h * dh) @ w.out.reshape(h * dh, d)
    return out + w.out_bias if w.out_bias is not None else out


def attend_at(adapter, layer: int, q, k, v, rotary, q_pos: torch.Tensor) -> torch.Tensor:
    """Attention for queries at positions q_pos [N | 1, Pq] over keys/values at every position
    0..P-1. q [N, Pq, H, d_head], k and v [N, P, kv_heads, d_head]. The arithmetic of
    `attend`, which is the case q_pos = 0..P-1."""
    n, pq, h, dh = q.shape
    p, kv = k.shape[1], k.shape[2]
    if rotary is not None:
        cos, sin = rotary
        q = rotate(q, cos[0][q_pos], sin[0][q_pos])
        k = rotate(k, cos, sin)
    qg = q.view(n, pq, kv, h // kv, dh).permute(0, 2, 3, 1, 4)  # [N, kv, group, Pq, dh]
    kg = k.permute(0, 2, 3, 1).unsqueeze(2)  # [N, kv, 1, dh, P]
    vg = v.permute(0, 2, 1, 3).unsqueeze(2)  # [N, kv, 1, P, dh]
    scores = (qg @ kg) * adapter.attn_scale(layer)
    j = torch.arange(p, device=q.device)
    allowed = j[None, None, :] <= q_pos[:, :, None]
    window = adapter.sliding_window(layer)
    if window is not None:
        allowed &= j[None, None, :] > q_pos[:, :, None] - window
    mask = torch.zeros(allowed.shape, dtype=scores.dtype, device=q.device).masked_fill(
        ~allowed, torch.finfo(scores.dtype).min)
    scores = scores + mask[:, None, None]
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(v.dtype)
    return (pattern @ vg).permute(0, 3, 1, 2, 4).reshape(n, pq, h, dh)
