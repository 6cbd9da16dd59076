"""Gradients along a path of inputs: the shared core of EAP, EAP-IG (inputs) and clean-corrupted.

For each alpha the embedding is set to reference + alpha * (clean - reference); the gradient at every
reader input is averaged over the alphas and dotted with (reference - clean) of each source. With
alphas = [1] this is EAP; with k/steps, k = 1..steps, EAP-IG (right Riemann sum); with [0, 1] the
clean-corrupted average of Hanna et al. (2024).

qk_fix: edges into q and k slots are scored through the exact attention pattern instead (qk.py): the
gradient with respect to each layer's pattern at the clean run (alpha = 1, as in AtP*), dotted with
the change of the pattern when that one edge carries its reference value. Not the path average of
the pattern gradient: away from alpha = 1 the value vectors are (partly) the corrupted ones, whose
gradient points the other way; on toy:induction that average gave the K-composition edges the wrong
sign (Pearson -0.94 with exact patching over k edges, against +0.99 at the clean run)."""

from __future__ import annotations

import sys

import torch

from ..core.progress import progress as progress_bar
from ..engine.patching import RunResult, run
from .common import Setup, edge_score_hook, new_neuron_matrix, new_score_matrix, neuron_score_hook, to_edge_scores
from .qk import ComposedMaps, PatternGradients, add_qk_scores, qk_readers


def input_path_scores(setup: Setup, alphas: list[float], desc: str, neurons: bool = False,
                      qk_fix: bool = False) -> torch.Tensor:
    """Per-edge scores; with neurons=True per-neuron scores instead ([n_sources, d_model], the same
    gradients dotted per output dimension with each source's own difference: methods/node.py)."""
    adapter, graph, metric = setup.adapter, setup.graph, setup.metric
    scores, n_examples = (new_neuron_matrix(setup) if neurons else new_score_matrix(setup)), 0
    make_hook = neuron_score_hook if neurons else edge_score_hook
    qk_fix = qk_fix and not neurons
    qk_scores = new_score_matrix(setup) if qk_fix else None
    composed = ComposedMaps()  # the QK fix's per-layer maps, shared by the batches
    alphas = sorted(alphas, key=lambda a: a != 1.0)  # the clean point first: it records the clean run
    total = setup.n_batches() * len(alphas)  # progress: one step per (batch, interpolation point)
    bar = progress_bar(total=total, desc=desc, file=sys.stderr, disable=not setup.progress, leave=False)
    for b_idx, batch in enumerate(setup.batches(desc, bar=False, watch=False)):
        ref = setup.reference(batch)
        with torch.no_grad():
            clean_embed = adapter.embed(batch.clean)
        clean = None if 1.0 in alphas else setup.clean_run(batch, record_resid=qk_fix)
        patterns = PatternGradients(graph.n_layers) if qk_fix else None
        state = {}
        for a_idx, alpha in enumerate(alphas):
            setup.tick(b_idx * len(alphas) + a_idx, total, desc)
            point = clean_embed if alpha == 1.0 else ref.embed + alpha * (clean_embed - ref.embed)
            embeds = point.detach().clone().requires_grad_(True)
            hook = lambda stage, first, g: state["hook"](stage, first, g)  # bound once the clean run is known
            result = run(adapter, graph, batch.clean, last=batch.clean_last, embeds=embeds,
                         record=clean is None, record_resid=qk_fix and clean is None, grad_hook=hook,
                         pattern_hook=patterns if alpha == 1.0 else None)
            if clean is None:  # alpha = 1 is the clean run itself
                clean = RunResult(result.logits.detach(), result.acts)
            if "hook" not in state:
                state["delta"] = ref.minus(clean.acts)
                state["hook"] = make_hook(setup, state["delta"], scores, 1.0 / len(alphas))
            value = metric(result.logits, batch, clean.logits).sum()
            value.backward()
            bar.update(1)
        if qk_fix:
            add_qk_scores(setup, clean.acts.resid, state["delta"], patterns.grads, qk_scores, composed)
        if clean.acts.resid:  # the clean run with its residuals: the batch's RunCache need not run it again
            setup.keep_run(batch, "clean", clean)
        n_examples += len(batch.rows)
    setup.tick(total, total, desc)
    bar.close()
    if neurons:
        return (scores / n_examples).cpu()
    if qk_fix:
        cols = torch.as_tensor(qk_readers(graph), device=scores.device)
        scores[:, cols] = qk_scores[:, cols]
    return to_edge_scores(setup, scores, n_examples)
