"""The patching core: one forward pass that evaluates any subset of edges.

Every reader slot gets its own copy of the residual stream:

    input(reader) = residual - sum over its upstream edges that are out of the circuit of
                    (live source output - reference source output)

where the residual is the sum of the source outputs of this very run, and the reference is the
corrupted run's output (patching), zero (zero ablation) or its mean over the corrupted prompts (mean
ablation). An edge in the circuit therefore carries its source's live value and an edge out of it the
reference value; with every edge kept this is the model's own forward, with none kept it is the
corrupted forward.

A grouped-query model's k/v readers are per query head by default (discovery/core/graph.py): where they
see different inputs, each query head's key and value are projected from its own input through its
group's shared weights and attention runs per head; where they all see the residual, the model's
grouped projections run as they are. Position-aware graphs (discovery/engine/positions.py) take masks
[N | 1, n_sources, n_readers, P, P] and give each query position its own keys and values where needed.

Head outputs are kept before the output projection (`d_head` wide per head) and contracted through it
one source layer at a time, so no [batch, pos, n_sources, d_model] tensor is ever built.

Padding is on the right and attention is causal, so padding tokens never influence a real token and
no attention mask is needed; callers read each row at its own last real token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from . import positions as positional
from ..core.graph import Graph, Stage
from ..model.adapters import Adapter
from .mixing import SourceWrites
from .attention import PatternHook, attend, attention_output, head_writes, per_query_head, project, project_qkv


@dataclass
class Activations:
    """Source outputs of a run. Head outputs `z` are per head, before the output projection."""

    embed: torch.Tensor  # [N, P, d]
    z: list[torch.Tensor]  # per layer [N, P, H, d_head]
    mlp: list[torch.Tensor]  # per layer [N, P, d]
    resid: list[torch.Tensor] = field(default_factory=list)  # per stage, when recorded

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "Activations":
        return Activations(fn(self.embed), [fn(t) for t in self.z], [fn(t) for t in self.mlp],
                           [fn(t) for t in self.resid])

    def minus(self, other: "Activations") -> "Activations":
        """Per-source differences self - other (broadcasting), e.g. corrupted - clean."""
        return Activations(self.embed - other.embed, [a - b for a, b in zip(self.z, other.z)],
                           [a - b for a, b in zip(self.mlp, other.mlp)])


@dataclass
class RunResult:
    logits: torch.Tensor  # [N, V] at `last` (or [N, P, V] when last is None)
    acts: Activations | None


def _mix(delta: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """delta [N, P, S, d] weighted by weights [N|1, S, D] -> [N, P, D, d]."""
    if weights.shape[0] == 1:
        return torch.einsum("npsm,sd->npdm", delta, weights[0])
    return torch.einsum("npsm,nsd->npdm", delta, weights)


def _stage_update(adapter, graph: Graph, stage: Stage, off: torch.Tensor, live_nonzero, deltas,
                  dims: torch.Tensor | None = None, writes: SourceWrites | None = None) -> torch.Tensor | None:
    """Sum over the stage's out-of-circuit edges of (live - reference) source outputs, per reader:
    [N, P, readers, d]. dims [N|1, n_sources, d]: each source's difference is first weighted per output
    dimension. With `writes` (one mask for every row, no dims): products of the source-major writes
    with the mask's rows (discovery/engine/mixing.py)."""
    emb, zs, mlps = deltas
    sl = slice(stage.start, stage.stop)
    total = None
    if writes is not None and dims is None and off.shape[0] == 1:
        n_up = stage.n_upstream
        total = writes.stage_sum(off[0, :n_up, sl], live_nonzero[:n_up, sl])  # [R, N * P * d]
        return total.view(total.shape[0], *writes.shape).permute(1, 2, 0, 3).contiguous()
    weigh = (lambda t, rows: t) if dims is None else (lambda t, rows: t * dims[:, None, rows])  # noqa: E731

    def add(term):
        nonlocal total
        total = term if total is None else total + term

    if live_nonzero[0, sl].any():
        add(_mix(weigh(emb.unsqueeze(2), slice(0, 1)), off[:, 0:1, sl]))
    for up in graph.upstream(stage):
        if live_nonzero[up.heads, sl].any():
            add(_mix(weigh(head_writes(adapter, up.layer, zs[up.layer]), up.heads), off[:, up.heads, sl]))
        m = up.mlp
        if m is not None and live_nonzero[m, sl].any():
            add(_mix(weigh(mlps[up.layer].unsqueeze(2), slice(m, m + 1)), off[:, m:m + 1, sl]))
    return total


GradHook = Callable[[Stage, int, torch.Tensor], None]


def _slot_gradients(norm, x: torch.Tensor):
    """Hooks for a stage whose readers all see x: the model runs its own fused projections, and each
    reader's gradient is rebuilt from the gradient at its head's projection output (head space):
    through the head's projection weights, then the norm's VJP at x (shared by every slot)."""
    _, vjp = torch.func.vjp(norm, x.detach())
    per_slot = torch.func.vmap(lambda c: vjp(c)[0], in_dims=2, out_dims=2)

    def reader_grad(grad_out: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        g_norm = torch.einsum("nphk,hkm->nphm", grad_out, weight.to(grad_out.dtype))
        return per_slot(g_norm)

    return reader_grad


def run(
    adapter: Adapter,
    graph: Graph,
    ids: torch.Tensor,
    *,
    last: torch.Tensor | None = None,
    ref: Activations | None = None,
    off: torch.Tensor | None = None,
    embeds: torch.Tensor | None = None,
    record: bool = False,
    record_resid: bool = False,
    grad_hook: GradHook | None = None,
    grad_stages: set[int] | None = None,
    start_stage: int = 0,
    start_resid: torch.Tensor | None = None,
    reader_override: dict[int, torch.Tensor] | None = None,
    off_dims: torch.Tensor | None = None,
    pattern_hook: PatternHook | None = None,
    cache: "RunCache | None" = None,
    skip: bool = True,
) -> RunResult:
    """One forward pass of the model through its own modules, with edges patched as `off` says.

    ids: [N, P] right-padded token ids; last: [N] position read for the logits (None: all positions).
    off: [N | 1, n_sources, n_readers], 1 where the edge is out of the circuit (carries `ref`), 0 where
      it is in; fractional values interpolate. None: every edge kept (the model's own forward). With a
      positional graph: [N | 1, n_sources, n_readers, P (src_pos), P (dst_pos)].
    embeds: replaces the embedding output (EAP-IG interpolates it).
    grad_hook(stage, first, grad [N, P, readers, d]): called in backward with the gradient at the
      inputs of the stage's readers first, first + 1, ... for the stages in grad_stages (all when
      None); the caller runs backward. Unpatched stages keep the model's fused projections. With a
      positional graph the k/v readers' gradient is [N, Pq, Pk, readers, d] (per query position).
    start_stage/start_resid: begin at a stage from a given residual (upstream sources not run).
    reader_override: {stage index: [N, P, d]} input seen by every reader of that stage instead of
      the residual; the residual itself flows on unchanged to later stages.
    off_dims: [N | 1, n_sources, d_model] weights of each source's (live - reference) difference per
      output dimension (neuron circuits: 1 where that neuron carries the reference, 0 where it is
      live), applied on the edges that `off` switches; None: every dimension (1).
    pattern_hook(layer, pattern): sees every layer's attention pattern (see `attend`); the QK fix
      registers gradient hooks on it.
    cache: a RunCache of this batch (ids and last are then the cache's): evaluate K masks off
      [K, n_sources, n_readers] in one no-grad pass, starting at start_stage (every edge into an
      earlier stage must be as in the cache's base circuit), reusing the cached upstream sources and,
      with skip, computing only the nodes the logits depend on and that differ from their reference
      (see discovery/engine/cached.py: run_cached). Returns logits [K * B, V], mask-major.
    """
    if cache is not None:  # the cached run is its own function (cached.run_cached), reached through its cache
        return RunResult(cache.run(start_stage, off, skip), None)
    n, p = ids.shape
    positions = torch.arange(p, device=ids.device)[None].expand(n, p)
    if start_resid is not None:
        resid = start_resid
        emb = None
    else:
        emb = adapter.embed(ids) if embeds is None else embeds
        resid = emb
    rotary = adapter.rotary(resid, positions)
    patching = off is not None and ref is not None
    if patching:
        off = off.to(resid.dtype)
        live_nonzero = (off != 0).any(dim=0).cpu().numpy()
        dims = None if off_dims is None else off_dims.to(resid.dtype)
        d_emb = emb - ref.embed if emb is not None else None
    d_z, d_mlp = [None] * graph.n_layers, [None] * graph.n_layers
    writes = None
    if patching and off.dim() == 3 and off.shape[0] == 1 and dims is None:
        writes = SourceWrites(adapter, graph, resid.shape, d_emb, d_z, d_mlp,
                              stacked=off.requires_grad and torch.is_grad_enabled())
    rec = Activations(emb.detach() if (record and emb is not None) else None, [None] * graph.n_layers,
                      [None] * graph.n_layers)

    def wants_grad(stage_idx: int) -> bool:
        return grad_hook is not None and (grad_stages is None or stage_idx in grad_stages)

    def reader_inputs(stage: Stage, stage_idx: int) -> torch.Tensor:
        """[N, P, readers, d] when readers see different inputs, else [N, P, d]."""
        shared = resid
        if reader_override is not None and stage_idx in reader_override:
            shared = reader_override[stage_idx]
        elif patching and live_nonzero[:stage.n_upstream, stage.start:stage.stop].any():
            if off.dim() == 5:  # positional edges: (local [N, P, R, d], k/v cross [N, Pq, Pk, Rkv, d] | None)
                local, cross = positional.stage_inputs(adapter, graph, stage, off, live_nonzero, resid,
                                                      (d_emb, d_z, d_mlp))
                return local if cross is None else (local, cross)
            x = resid.unsqueeze(2) - _stage_update(adapter, graph, stage, off, live_nonzero, (d_emb, d_z, d_mlp),
                                                   dims, writes)
            if wants_grad(stage_idx) and x.requires_grad:
                x.register_hook(lambda g, st=stage: grad_hook(st, 0, g))
            return x
        if wants_grad(stage_idx) and shared.requires_grad:
            x = shared.view_as(shared)  # its own autograd node: the gradient of these readers only
            if stage.kind != "attn":
                x.register_hook(lambda g, st=stage: grad_hook(st, 0, g.unsqueeze(2)))
            return x
        return shared

    pending_attn = None
    for idx, stage in enumerate(graph.stages):
        if idx < start_stage:
            continue
        if record_resid:
            rec.resid.append(resid.detach())
        x = reader_inputs(stage, idx)
        layer = stage.layer
        if stage.kind == "attn":
            h, kv = graph.n_heads, graph.n_kv_readers
            norm = lambda t, layer=layer: adapter.attn_norm(layer, t)
            xn = None if isinstance(x, tuple) else norm(x)
            z = None
            if xn is None:  # positional edges: each query position has its own keys and values
                w = adapter.heads(layer)
                q = project(norm(x[0][:, :, :h]), w.q, w.q_bias)
                k, v = positional.project_per_query(adapter, graph, layer, norm(x[1]))
                z = positional.attend_per_query(adapter, layer, q, k, v, rotary)
            elif xn.dim() == 4:  # readers see different inputs: k/v projected per reader (per query head)
                xq, xk, xv = xn.split([h, kv, xn.shape[2] - h - kv], dim=2)  # (one gradient buffer, not three)
                q, k, v = project_qkv(adapter, layer, xq, xk, xv, kv_heads=graph.kv_weight_heads())
            else:  # one input for all: the model's own projections
                q, k, v = project_qkv(adapter, layer, xn, xn, xn)
                if wants_grad(idx) and q.requires_grad:
                    reader_grad = _slot_gradients(norm, x)
                    w = adapter.heads(layer)
                    wk, wv = w.k, w.v
                    if kv != graph.n_kv_heads:  # per-query-head readers: each head's gradient before the group sum
                        k, v = per_query_head(k, h), per_query_head(v, h)
                        idx_kv = torch.as_tensor(graph.kv_weight_heads(), device=wk.device)
                        wk, wv = wk[idx_kv], wv[idx_kv]
                    cross_grad = None
                    if graph.n_positions is not None:  # a gradient per (query, key position): keys/values per query
                        n_, p_ = k.shape[:2]
                        k, v = (t.unsqueeze(1).expand(n_, p_, *t.shape[1:]) for t in (k, v))
                        cross_grad = positional.cross_reader_gradients(norm, x)
                        z = positional.attend_per_query(adapter, layer, q, k, v, rotary)
                    for t, weight, first in ((q, w.q, 0), (k, wk, h), (v, wv, h + kv)):
                        rg = cross_grad if (cross_grad is not None and first) else reader_grad
                        t.register_hook(lambda g, wt=weight, f=first, st=stage, rg=rg: grad_hook(st, f, rg(g, wt)))
            if z is None:
                z = attend(adapter, layer, q, k, v, rotary, pattern_hook)
            if record:
                rec.z[layer] = z.detach()
            if patching:
                d_z[layer] = z - ref.z[layer]
            attn_out = attention_output(adapter, layer, z)
            if graph.parallel:
                pending_attn = attn_out
            else:
                resid = resid + attn_out
        elif stage.kind == "mlp":
            xn = adapter.mlp_norm(layer, x[:, :, 0] if x.dim() == 4 else x)
            out = adapter.mlp(layer, xn)
            if record:
                rec.mlp[layer] = out.detach()
            if patching:
                d_mlp[layer] = out - ref.mlp[layer]
            resid = resid + out
            if pending_attn is not None:
                resid = resid + pending_attn
                pending_attn = None
        else:
            final = x[:, :, 0] if x.dim() == 4 else x
            if last is not None:
                final = final[torch.arange(n, device=final.device), last]
            logits = adapter.unembed(final)
    return RunResult(logits, rec if (record or record_resid) else None)


