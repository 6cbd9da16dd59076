"""Checking an attribution graph by intervention on the real model.

Target: the graph's first logit node t (the most probable next token), read as its demeaned logit
z_t = logit_t - mean_v logit_v at the last position, the quantity the graph's logit node attributes.

Feature check (`intervention_check`, for the N features with the highest influence):
- measured: switch feature f (layer l, position p, activation a_f) off in the real model: subtract
  its decoder write a_f W_dec[f] from the MLP output of layer l at position p (and, for a cross-layer
  transcoder, a_f W_dec[f, j - l] from every later layer j), and let everything downstream (attention
  patterns, norms, the real MLPs) recompute; measured = z_t(off) - z_t(model).
- predicted by the graph: the same switch-off in the linear replacement, propagated through the
  graph's edges: J[s', s] = A[s', s] / a_s is the change of target s''s pre-activation per unit of
  source s's activation, active features pass a change of their pre-activation on unchanged (ReLU and
  JumpReLU have slope 1 where active); so the activations change by d = -(I - J_ff)^-1 a_f e_f and
  predicted = J[t, features] d. `direct` is the graph's single edge -A[t, f].
- stored: per feature both, and the Pearson correlation of measured against predicted.

Circuit check (`circuit_check`): the replacement model run with each MLP replaced by its transcoder
(features recomputed from the run's own MLP inputs) plus its error node frozen at its value on the
prompt (position 0's MLP output frozen whole), keeping (a) every feature: the model's own logits, by
construction, (b) only the features of the pruned graph, all others at zero, (c) no feature at all.
Attention and norms recompute. recovered = (z_t(b) - z_t(c)) / (z_t(a) - z_t(c)): the share of the
features' joint effect on the target that the pruned graph's features carry. Errors are frozen,
not removed, because they are part of the graph as nodes in their own right (kept whatever the
pruning), so the check measures the features' share only.
"""

from __future__ import annotations

import contextlib

import torch

from ..model.adapters import LoadedModel
from . import replacement as rep
from .attribution import reads_pre_norm, tokenize  # noqa: F401 (tokenize: the same ids as the graph)


def _target(logits: torch.Tensor, token: int) -> torch.Tensor:
    """Demeaned logit of token at the last position, per row: logits [N, P, V]."""
    last = logits[:, -1].float()
    return last[:, token] - last.mean(-1)


@contextlib.contextmanager
def _mlp_hooks(model: LoadedModel, fn):
    """fn(layer, mlp_input, mlp_output) -> new output, on every MLP module of the model."""
    handles = [block.mlp.register_forward_hook(lambda m, args, out, layer=i: fn(layer, args[0], out))
               for i, block in enumerate(model.adapter.blocks())]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _forward(model: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.hf_model(ids).logits


def feature_effects(model: LoadedModel, tc, graph, idx: list[int], batch: int = 16) -> torch.Tensor:
    """Measured change of the target's demeaned logit when each feature idx[i] is switched off."""
    dev = model.adapter.device
    ids = torch.tensor(graph.tokens, device=dev)[None]
    token = graph.logit_tokens[0]
    base = _target(_forward(model, ids), token)[0]
    out = []
    for start in range(0, len(idx), batch):
        chunk = idx[start:start + batch]
        n = len(chunk)
        deltas: dict[int, torch.Tensor] = {}
        for row, i in enumerate(chunk):
            layer, pos, feat = graph.features[i].tolist()
            dec = tc.decoder(layer)[feat].float() * float(graph.activations[i])
            for k, j in enumerate(range(layer, graph.n_layers if tc.cross_layer else layer + 1)):
                d = deltas.setdefault(j, torch.zeros(n, graph.n_pos, model.adapter.d_model, device=dev))
                d[row, pos] -= (dec[k] if tc.cross_layer else dec).to(dev)

        def hook(layer, x, y, deltas=deltas):
            return y + deltas[layer].to(y.dtype) if layer in deltas else y

        with _mlp_hooks(model, hook):
            out.append(_target(_forward(model, ids.expand(n, -1)), token) - base)
    return torch.cat(out).cpu() if out else torch.zeros(0)


def predicted_effects(graph, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted through the graph, direct edge) change of the target when each feature is off."""
    nf = graph.n_features
    acts = graph.activations.double()
    J = graph.adjacency[:nf, :nf].double() / acts[None, :]  # per unit of source activation
    t_row = graph.adjacency[nf, :nf].double() / acts
    rhs = torch.zeros(nf, len(idx), dtype=torch.float64)
    for k, i in enumerate(idx):
        rhs[i, k] = -acts[i]
    d = torch.linalg.solve(torch.eye(nf, dtype=torch.float64) - J, rhs)
    predicted = t_row @ d
    direct = -graph.adjacency[nf, torch.tensor(idx, dtype=torch.long)].double() if idx else torch.zeros(0)
    return predicted.float(), direct.float()


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float | None:
    if len(a) < 3:
        return None
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else None


def circuit_check(model: LoadedModel, tc, graph, kept: torch.Tensor) -> dict:
    """Target logits of the replacement model with all, the kept (bool [n_features]) and no features."""
    dev = model.adapter.device
    ids = torch.tensor(graph.tokens, device=dev)
    pre_norm = reads_pre_norm(tc)
    rec = rep.record(model, ids, pre_norm)
    original = [m.to(dev) for m in rec.mlp_out]
    recon = tc.reconstruct(list(rec.tc_inputs))
    errors = [m - r.float() for m, r in zip(original, recon)]
    full = [torch.ones(graph.n_pos, tc.n_features, device=dev) for _ in range(graph.n_layers)]
    some = [torch.zeros(graph.n_pos, tc.n_features, device=dev) for _ in range(graph.n_layers)]
    for (layer, pos, feat) in graph.features[kept.cpu()].tolist():
        some[layer][pos, feat] = 1
    none = [torch.zeros_like(m) for m in full]
    results = {}
    norm_inputs: dict[int, torch.Tensor] = {}
    norm_hooks = [model.adapter.mlp_norm_module(layer).register_forward_pre_hook(
        lambda m, args, layer=layer: norm_inputs.__setitem__(layer, args[0]))
        for layer in range(graph.n_layers)] if pre_norm else []
    try:
        for name, masks in (("all", full), ("circuit", some), ("none", none)):
            acts: list[torch.Tensor] = []

            def hook(layer, x, y, masks=masks, acts=acts):
                xin = (norm_inputs[layer] if pre_norm else x)[0]
                acts.append(tc.encode(layer, xin) * masks[layer])
                out = tc.decode(layer, acts, xin) + errors[layer]
                out[0] = original[layer][0]
                return out[None].to(y.dtype)

            with _mlp_hooks(model, hook):
                results[name] = float(_target(_forward(model, ids[None]), graph.logit_tokens[0])[0])
    finally:
        for h in norm_hooks:
            h.remove()
    model_value = float(_target(_forward(model, ids[None]), graph.logit_tokens[0])[0])
    span = results["all"] - results["none"]
    return {"target_logit": model_value, "replacement_all": results["all"], "circuit": results["circuit"],
            "no_features": results["none"], "recovered": (results["circuit"] - results["none"]) / span
            if abs(span) > 1e-12 else None, "n_features_kept": int(kept.sum())}


def intervention_check(model: LoadedModel, tc, graph, doc: dict, n_features: int = 10) -> dict:
    """Both checks for a graph and its document (graph_file.graph_document): the dict stored under
    the file's `intervention` key."""
    nf = graph.n_features
    infl = torch.tensor([n["influence"] for n in doc["nodes"] if n["type"] == "feature"]) \
        if not doc["settings"]["pruned"] else None
    from .pruning import prune

    p = prune(graph, doc["settings"]["node_threshold"], doc["settings"]["edge_threshold"])
    infl = p.influence[:nf] if infl is None else infl
    idx = torch.argsort(infl, descending=True, stable=True)[: min(n_features, nf)].tolist()
    measured = feature_effects(model, tc, graph, idx)
    predicted, direct = predicted_effects(graph, idx)
    kept = p.node_mask[:nf] if doc["settings"]["pruned"] else torch.ones(nf, dtype=torch.bool)
    features = [{"id": f"{layer}_{feat}_{pos}", "layer": layer, "pos": pos, "feature": feat,
                 "influence": float(infl[i]), "measured": float(m), "predicted": float(pr), "direct": float(d)}
                for i, m, pr, d in zip(idx, measured, predicted, direct)
                for layer, pos, feat in [graph.features[i].tolist()]]
    return {"target": {"token": graph.logit_tokens[0], "text": graph.logit_strings[0]},
            "correlation": _pearson(measured, predicted), "correlation_direct": _pearson(measured, direct),
            "features": features, "circuit": circuit_check(model, tc, graph, kept)}
