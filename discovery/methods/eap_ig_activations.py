"""EAP-IG over activations (Hanna et al. 2024): integrated gradients at each point of the residual stream.

For each residual point (one layer's attention input, its MLP input, the logits input; a parallel-
residual layer's attention and MLP share one), the input seen by that point's readers is interpolated
from its reference value to its clean value while the residual flowing on to later layers stays
clean; the gradients at those readers, averaged over the steps, are dotted with (reference - clean)
of each upstream source. So the scores of the edges into one point add up (as steps grow) to the
metric change of switching exactly those edges to their reference: the completeness of integrated
gradients, which the tests check."""

from __future__ import annotations

import torch

from ..core.errors import UserError
from ..engine.patching import run
from .common import Setup, edge_score_hook, new_score_matrix, reference_residuals, to_edge_scores


def residual_points(graph) -> list[list[int]]:
    """Stage indices grouped by the residual they read."""
    points: list[list[int]] = []
    for idx, stage in enumerate(graph.stages):
        shares = points and graph.parallel and stage.kind == "mlp"
        if shares:
            points[-1].append(idx)
        else:
            points.append([idx])
    return points


def eap_ig_activations(setup: Setup, steps: int = 5):
    if steps < 1:
        raise UserError(f"--steps must be at least 1 (got {steps})")
    adapter, graph, metric = setup.adapter, setup.graph, setup.metric
    scores, n_examples = new_score_matrix(setup), 0
    alphas = [k / steps for k in range(1, steps + 1)]
    for batch in setup.batches("eap-ig-activations"):
        ref = setup.reference(batch)
        clean = setup.clean_run(batch, record_resid=True)
        delta = ref.minus(clean.acts)
        with torch.no_grad():
            ref_resid = reference_residuals(setup, clean.acts, delta)
        hook = edge_score_hook(setup, delta, scores, 1.0 / steps)
        for point in residual_points(graph):
            first = point[0]
            for alpha in alphas:
                x = ref_resid[first] + alpha * (clean.acts.resid[first] - ref_resid[first])
                x = x.detach().requires_grad_(True)
                result = run(adapter, graph, batch.clean, last=batch.clean_last, start_stage=first,
                             start_resid=clean.acts.resid[first], reader_override={i: x for i in point},
                             grad_hook=hook, grad_stages=set(point))
                metric(result.logits, batch, clean.logits).sum().backward()
        n_examples += len(batch.rows)
    return to_edge_scores(setup, scores, n_examples)
