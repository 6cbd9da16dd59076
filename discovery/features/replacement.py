"""The local replacement model of one prompt: the model's own forward, recorded, and its linearisation.

Definitions (one prompt of P tokens, model with L layers, residual width d):

- r_l: the residual stream entering layer l (r_0 the embedding output, with learned positions for
  GPT-2); m_l the MLP's output; x_l the transcoder's input, the MLP's input after its norm (the
  `mlp.hook_in` / `ln2.hook_normalized` hook; with `hook_resid_mid` the residual before the norm).
  Sequential blocks: r_mid = r_l + attn_l(N1(r_l)), r_{l+1} = r_mid + m_l(N2(r_mid)); parallel blocks
  (GPT-NeoX): r_{l+1} = r_l + attn_l(N1(r_l)) + m_l(N2(r_l)).
- Frozen: every attention pattern A_l [H, P, P] and every norm's denominator s(y) = sqrt(mean(c(y)^2)
  + eps) (c centres for LayerNorm, is the identity for RMSNorm) keep their values on this prompt. A
  norm is then the affine map y -> w * c(y) / s + b and attention is linear in its value inputs.
- Each MLP is replaced by its transcoder plus an error node: m_l = sum_f a_f W_dec[f] (all layers'
  features writing to l for a cross-layer transcoder) + W_skip x_l + b_dec + e_l, with the error e_l =
  m_l - reconstruction_l taken from this very run, so the replacement reproduces the model exactly.
- Position 0 (the BOS circuit-tracer prepends; an attention sink) has no feature and no error nodes:
  its MLP outputs are constants of the replacement, as in circuit-tracer.
- Nodes: active features (layer, position, feature; activation a != 0), error nodes (layer,
  position), token embeddings (the token embedding alone; learned positions are constants) and logits.
- Linear paths: with features, errors, biases and the frozen quantities held fixed, the residual
  stream is linear in the node writes; the only paths between nodes run through the residual, the
  frozen attention's value/output maps, the frozen norms and the skip matrices. `transpose_*` below
  are the transposes of these maps (what a backward pass through them computes).

Everything derived here is float32 whatever the model's dtype (weights are cast one layer at a time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..core.errors import UserError
from ..model.adapters import LoadedModel, norm_affine
from ..engine.patching import attend, attention_output, project_qkv

PRE_NORM_HOOKS = ("hook_resid_mid", "resid_mid")  # transcoder input hooks that read the residual itself


@dataclass
class FrozenNorm:
    """A norm at its operating point: y -> weight * c(y) / scale + bias, scale [P] frozen."""

    centered: bool
    weight: torch.Tensor  # [d] fp32
    scale: torch.Tensor  # [P] fp32

    def transpose(self, g: torch.Tensor) -> torch.Tensor:
        """The transposed Jacobian applied to g [..., P', d] (P' <= P leading positions)."""
        out = g * self.weight / self.scale[: g.shape[-2], None]
        return out - out.mean(-1, keepdim=True) if self.centered else out

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        """The linear part (no bias) applied to y [..., P', d]."""
        c = y - y.mean(-1, keepdim=True) if self.centered else y
        return self.weight * c / self.scale[: y.shape[-2], None]


def frozen_norm(module: torch.nn.Module, y: torch.Tensor) -> FrozenNorm:
    aff = norm_affine(module)
    if aff is None:
        raise UserError(f"attribution needs LayerNorm or RMSNorm norms; {type(module).__name__} is neither")
    y = y.float()
    c = y - y.mean(-1, keepdim=True) if aff.centered else y
    scale = torch.sqrt((c * c).mean(-1) + aff.eps)
    return FrozenNorm(aff.centered, aff.weight.detach().float(), scale)


def encoder_rows(tc, layer: int, idx: torch.Tensor) -> torch.Tensor:
    """W_enc[layer][idx] [n, d] fp32: the features' encoder directions (pre-activation = x . row + b)."""
    for name in ("encoder", "W_enc"):
        w = getattr(tc, name, None)
        if callable(w):
            return w(layer)[idx].float()
        if w is not None:
            return w[layer][idx].float()
    d = tc.d_model  # the pre-activation is affine in x: its rows are the images of the unit vectors
    eye = torch.eye(d, dtype=torch.float32, device=idx.device)
    zero = torch.zeros(1, d, dtype=torch.float32, device=idx.device)
    return (tc.pre_activation(layer, eye) - tc.pre_activation(layer, zero)).float()[:, idx].T.contiguous()


def skip_matrix(tc, layer: int, device) -> torch.Tensor | None:
    """S [d, d] with skip(x) = x @ S (S = W_skip^T), or None when the transcoders have no skip."""
    if not getattr(tc, "has_skip", False):
        return None
    eye = torch.eye(tc.d_model, dtype=torch.float32, device=device)
    out = tc.skip(layer, eye)
    return None if out is None else out.float()


def decoder_rows(tc, layer: int, idx: torch.Tensor) -> torch.Tensor:
    """Decoder rows of features idx of a layer: [n, d] (per-layer) or [n, L - layer, d] (cross-layer)."""
    return tc.decoder(layer)[idx].float()


@dataclass
class Recorded:
    """The model's forward on one prompt and what the replacement freezes."""

    ids: torch.Tensor  # [P]
    logits: torch.Tensor  # [V] fp32 at the last position
    patterns: list[torch.Tensor]  # per layer [H, P, P] fp32
    norm1: list[FrozenNorm]
    norm2: list[FrozenNorm]
    norm_final: FrozenNorm
    tc_inputs: list[torch.Tensor]  # per layer [P, d], what the transcoder reads (model dtype)
    mlp_out: list[torch.Tensor]  # per layer [P, d] fp32
    final_resid: torch.Tensor  # [P, d] fp32


def record(model: LoadedModel, ids: torch.Tensor, pre_norm: bool) -> Recorded:
    """Run the model's own modules on ids [P] (no grad) and record the frozen quantities."""
    a = model.adapter
    ids2 = ids[None]
    patterns, n1, n2, xs, ms = [], [], [], [], []
    with torch.no_grad():
        resid = a.embed(ids2)
        rotary = a.rotary(resid, torch.arange(ids2.shape[1], device=ids.device)[None])
        for layer in range(a.n_layers):
            n1.append(frozen_norm(a.attn_norm_module(layer), resid[0]))
            xn = a.attn_norm(layer, resid)
            q, k, v = project_qkv(a, layer, xn, xn, xn)
            seen = []
            z = attend(a, layer, q, k, v, rotary, pattern_hook=lambda _l, p: seen.append(p))
            patterns.append(seen[0][0].reshape(-1, *seen[0].shape[-2:]))  # [H, P, P], h = g * group + j
            attn = attention_output(a, layer, z)
            mid = resid if a.parallel else resid + attn
            n2.append(frozen_norm(a.mlp_norm_module(layer), mid[0]))
            x = a.mlp_norm(layer, mid)
            m = a.mlp(layer, x)
            xs.append((mid if pre_norm else x)[0])
            ms.append(m[0].float())
            resid = mid + m + (attn if a.parallel else 0)
        nf = frozen_norm(a.final_norm_module(), resid[0])
        logits = a.unembed(resid[:, -1:])[0, -1].float()
    return Recorded(ids, logits, patterns, n1, n2, nf, xs, ms, resid[0].float())


def attention_transpose(model: LoadedModel, layer: int, pattern: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The transposed frozen attention map (value and output projections, pattern fixed) on the
    gradient g [B, P', d] at its output: the gradient [B, P', d] at its normed input."""
    w = model.adapter.heads(layer)
    h, dh, d = w.out.shape
    kv = w.v.shape[0]
    p = g.shape[1]
    B = g.shape[0]
    # the batch rides in the matrix product's columns: one [P, P] x [P, B * dh] product per head
    gz = (g @ w.out.float().reshape(h * dh, d).T).view(B, p, h, dh).permute(2, 1, 0, 3).reshape(h, p, B * dh)
    gv = torch.bmm(pattern[:, :p, :p].transpose(-1, -2), gz)  # [H, Pk, B * dh]
    gv = gv.view(kv, h // kv, p, B, dh).sum(1).permute(2, 1, 0, 3).reshape(B, p, kv * dh)
    return gv @ w.v.float().reshape(kv * dh, d)

