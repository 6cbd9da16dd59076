"""Gradients along a path of inputs: the shared core of EAP, EAP-IG (inputs) and clean-corrupted.

For each alpha the embedding is set to reference + alpha * (clean - reference); the gradient at every
reader input is averaged over the alphas and dotted with (reference - clean) of each source. With
alphas = [1] this is EAP; with k/steps, k = 1..steps, EAP-IG (right Riemann sum); with [0, 1] the
clean-corrupted average of Hanna et al. (2024)."""

from __future__ import annotations

import torch

from ..patching import RunResult, run
from .common import Setup, edge_score_hook, new_score_matrix, to_edge_scores


def input_path_scores(setup: Setup, alphas: list[float], desc: str, neurons: bool = False) -> torch.Tensor:
    """Per-edge scores; with neurons=True per-neuron scores instead ([n_sources, d_model], the same
    gradients dotted per output dimension with each source's own difference: methods/node.py)."""
    from .node import new_neuron_matrix, neuron_score_hook

    adapter, graph, metric = setup.adapter, setup.graph, setup.metric
    scores, n_examples = (new_neuron_matrix(setup) if neurons else new_score_matrix(setup)), 0
    make_hook = neuron_score_hook if neurons else edge_score_hook
    alphas = sorted(alphas, key=lambda a: a != 1.0)  # the clean point first: it records the clean run
    for batch in setup.batches(desc):
        ref = setup.reference(batch)
        with torch.no_grad():
            clean_embed = adapter.embed(batch.clean)
        clean = None if 1.0 in alphas else setup.clean_run(batch)
        state = {}
        for alpha in alphas:
            embeds = (ref.embed + alpha * (clean_embed - ref.embed)).detach().requires_grad_(True)
            hook = lambda stage, first, g: state["hook"](stage, first, g)  # bound once the clean run is known
            result = run(adapter, graph, batch.clean, last=batch.clean_last, embeds=embeds,
                         record=clean is None, grad_hook=hook)
            if clean is None:  # alpha = 1 is the clean run itself
                clean = RunResult(result.logits.detach(), result.acts)
            if "hook" not in state:
                state["hook"] = make_hook(setup, ref.minus(clean.acts), scores, 1.0 / len(alphas))
            value = metric(result.logits, batch, clean.logits).sum()
            value.backward()
        n_examples += len(batch.rows)
    return (scores / n_examples).cpu() if neurons else to_edge_scores(setup, scores, n_examples)
