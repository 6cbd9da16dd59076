"""Reader inputs from source writes, one matrix product per stage (the patching core's mixing step).

A reader r of a stage sees

    input(r) = residual - sum over upstream sources s of off[s, r] * (live_s - reference_s)

(discovery/engine/patching.py). With one mask for every row (off [1, n_sources, n_readers]) the sum is a
matrix product: the writes (live - reference) of the sources, source-major [S, N * P * d] (a head's
write is its d_head output difference through its slice of the output projection), times the mask's
block off[0, :S, readers] [S, R]. `SourceWrites` holds a run's writes that way:

- without a mask gradient (evaluations), each node's writes (the embedding, one layer's heads, one
  layer's MLP) are formed when a stage needs them, one product per node, and never all held at once
  (the patching core's memory bound);
- when the mask itself requires grad (a learned mask: Edge Pruning), every node's writes are copied
  once, as they are computed, into one source-major buffer [n_sources, N * P * d], and a stage's
  inputs are one product with the buffer's first S rows (`StackedMix`): every write is needed by
  the mask's gradient anyway, so the buffer holds them once for the whole run instead of a copy per
  stage, and the backward is two products per stage.

Both give the same sums, up to the order of floating-point additions.
"""

from __future__ import annotations

import numpy as np
import torch


class StackedMix(torch.autograd.Function):
    """coef.T @ stack, where stack [S, M] holds (without autograd) the rows of `parts` (the
    differentiable writes [S_i, M], in order): the product's gradient reaches coef [S, R] and every part.

    The stack is a view of a buffer whose later rows are filled after this product; its first S rows
    never change again, so it is kept on ctx rather than saved (which would check the buffer's version)."""

    @staticmethod
    def forward(ctx, coef: torch.Tensor, stack: torch.Tensor, *parts: torch.Tensor) -> torch.Tensor:
        ctx.stack = stack
        ctx.sizes = [p.shape[0] for p in parts]
        ctx.save_for_backward(coef)
        return coef.T @ stack

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (coef,) = ctx.saved_tensors
        g_coef = ctx.stack @ grad.T if ctx.needs_input_grad[0] else None
        g_parts = (coef @ grad).split(ctx.sizes) if any(ctx.needs_input_grad[2:]) else [None] * len(ctx.sizes)
        return (g_coef, None, *g_parts)


class SourceWrites:
    """A run's (live - reference) source writes, source-major (see the module docstring).

    graph: the run's Graph (its source rows: the embedding is row 0, layer l's heads
    graph.head_rows(l), its MLP the row after them); shape: the residual's [N, P, d]; d_emb [N, P, d];
    d_z, d_mlp: per layer lists, filled by the run as it goes ([N, P, H, d_head] and [N, P, d]).
    stacked: keep every write in one buffer (a learned mask; see the module docstring)."""

    def __init__(self, adapter, graph, shape, d_emb, d_z: list, d_mlp: list, stacked: bool):
        self.adapter, self.shape, self.stacked = adapter, tuple(shape), stacked and d_emb is not None
        self.d_emb, self.d_z, self.d_mlp = d_emb, d_z, d_mlp
        self.n_sources = graph.n_sources
        # (first row, stop row, kind, layer) of every node, in source order
        self.nodes = [(0, 1, "embed", -1)]
        for layer in range(graph.n_layers):
            h0, h1 = graph.head_rows(layer)
            self.nodes += [(h0, h1, "heads", layer), (h1, h1 + 1, "mlp", layer)]
        self._buffer: torch.Tensor | None = None
        self._parts: list[torch.Tensor] = []  # the differentiable writes copied into the buffer, in row order
        self._filled = 0  # buffer rows filled

    def embed(self) -> torch.Tensor:
        return self.d_emb.reshape(1, -1)

    def mlp(self, layer: int) -> torch.Tensor:
        return self.d_mlp[layer].reshape(1, -1)

    def heads(self, layer: int) -> torch.Tensor:
        z = self.d_z[layer]
        w = torch.einsum("nphk,hkm->hnpm", z, self.adapter.heads(layer).out.to(z.dtype))
        return w.reshape(w.shape[0], -1)

    def writes(self, kind: str, layer: int) -> torch.Tensor:
        """A node's writes, source-major: [its rows, N * P * d]."""
        return self.embed() if kind == "embed" else self.heads(layer) if kind == "heads" else self.mlp(layer)

    def _fill(self, upto: int) -> None:
        """Copy the writes of sources [filled, upto) into the buffer (each node once, in order)."""
        if self._buffer is None:
            d = self.d_emb
            self._buffer = torch.empty(self.n_sources, d.numel(), dtype=d.dtype, device=d.device)
        for a, b, kind, layer in self.nodes:
            if b > upto:
                break
            if a < self._filled:
                continue
            part = self.writes(kind, layer)
            with torch.no_grad():
                self._buffer[a:b].copy_(part)
            self._parts.append(part)
            self._filled = b

    def stage_sum(self, coef: torch.Tensor, live: np.ndarray) -> torch.Tensor:
        """sum over the first S = len(coef) sources of coef[s, r] * write_s: [R, N * P * d]. live [S, R]:
        where coef is nonzero; without the buffer, nodes with none are left out."""
        upto = coef.shape[0]
        if self.stacked:
            self._fill(upto)
            parts, n = [], 0
            for p in self._parts:
                if n >= upto:
                    break
                parts.append(p)
                n += p.shape[0]
            if n != upto:
                raise AssertionError("a stage's upstream sources end at a node boundary")
            return StackedMix.apply(coef, self._buffer[:upto], *parts)
        total = None
        for a, b, kind, layer in self.nodes:
            if b > upto:
                break
            if live[a:b].any():
                c, w = coef[a:b].T, self.writes(kind, layer)
                total = c @ w if total is None else torch.addmm(total, c, w)
        return total
