"""Node and neuron scores: the metric change when a whole component's output (node), or one output
dimension of it (neuron), is switched to its reference value on every edge it writes.

Sources are the graph's writers (`input`, heads, MLPs), in the graph's source order; a neuron of a
source is one dimension of its write to the residual stream (d_model wide, a head's write after its
output projection), as the EAP-IG library's neuron graphs.

Gradient estimates (eap, eap-ig, clean-corrupted): a source's output reaches every later reader
through the residual, so the gradient with respect to it is the sum of its readers' input gradients,
and

    neuron score[s, i] = mean over examples of sum over positions of
                         (reference_s - clean_s)[i] * sum over readers r of s of grad_r[i]

taken along the same inputs as the edge method (the clean run for EAP, embeddings interpolated from
the reference for EAP-IG). A node's score is the sum of its neurons'; for these methods it is
therefore exactly the sum of the scores of the node's outgoing edges. Memory: [n_sources, d_model]
fp32 scores and the edge methods' per-stage gradients, nothing per edge.

EAP-IG over activations (as the library's node EAP-IG-activations): one node at a time, its output
interpolated from the reference to the clean value (alpha = k/steps; on every edge out of it, all
else recomputed), the gradient at it averaged over the steps and dotted with (reference - clean).
By the completeness of integrated gradients a node's score tends to its exact score as steps grow.

Exact (nodes only): each node's outgoing edges switched to the reference together, measured.
"""

from __future__ import annotations

import torch

from ..core import registry
from ..core.errors import UserError
from ..engine.patching import Activations, run
from .common import Setup, new_neuron_matrix
from .exact import measured_effects
from .input_path import input_path_scores
from .scoring import score_edges

NODE_METHODS = registry.names(level="node")
NEURON_METHODS = registry.names(level="neuron")


def neuron_scores(setup: Setup, method: str, steps: int = 5) -> torch.Tensor:
    """[n_sources, d_model] neuron scores (float32, CPU)."""
    if method not in NEURON_METHODS:
        raise UserError(f"method '{method}' has no neuron-level scores; choose one of {', '.join(NEURON_METHODS)}")
    if method == "eap-ig-activations":
        return activation_path_scores(setup, steps)
    if method == "eap":
        alphas = [1.0]
    elif method == "eap-ig":
        if steps < 1:
            raise UserError(f"--steps must be at least 1 (got {steps})")
        alphas = [k / steps for k in range(1, steps + 1)]
    else:
        alphas = [0.0, 1.0]
    return input_path_scores(setup, alphas, method, neurons=True)


def node_scores(setup: Setup, method: str, steps: int = 5, qk_fix: bool = False) -> torch.Tensor:
    """[n_sources] node scores (float32, CPU): measured for `exact`, else the sum of neuron scores.
    qk_fix (eap, eap-ig, clean-corrupted): the sum of the node's outgoing edge scores with q/k edges
    scored through the exact attention pattern (qk.py); without it that sum is the plain score."""
    if method not in NODE_METHODS:
        raise UserError(f"method '{method}' has no node-level scores; choose one of {', '.join(NODE_METHODS)}")
    if method == "exact":
        return exact_nodes(setup)
    if qk_fix:
        edges = score_edges(setup, method, steps=steps, qk_fix=True)
        src = torch.as_tensor(setup.graph.edge_src)
        return torch.zeros(setup.graph.n_sources, dtype=edges.dtype).index_add_(0, src, edges)
    return neuron_scores(setup, method, steps).sum(1)


def source_delta(setup: Setup, delta: Activations, s: int) -> torch.Tensor:
    """Source s's (reference - clean) write [N | 1, P | 1, d_model], fp32."""
    graph = setup.graph
    if s == 0:
        return delta.embed.float()
    layer, index = divmod(s - 1, graph.n_heads + 1)
    if index == graph.n_heads:
        return delta.mlp[layer].float()
    z = delta.z[layer][:, :, index:index + 1].float()
    return torch.einsum("nphk,hkm->npm", z, setup.adapter.heads(layer).out[index:index + 1].float())


def activation_path_scores(setup: Setup, steps: int, max_rows: int = 256) -> torch.Tensor:
    """[n_sources, d_model] EAP-IG-activations neuron scores: per source, its output interpolated from
    the reference to clean on all its edges (fractional `off`), several sources per pass."""
    if steps < 1:
        raise UserError(f"--steps must be at least 1 (got {steps})")
    graph, adapter = setup.graph, setup.adapter
    scores, n_examples = new_neuron_matrix(setup), 0
    valid = torch.as_tensor(graph.valid, dtype=torch.float32)
    for batch in setup.batches("eap-ig-activations"):
        b = len(batch.rows)
        ref = setup.reference(batch)
        clean = setup.clean_run(batch)
        delta = ref.minus(clean.acts)
        with torch.no_grad():
            clean_embed = adapter.embed(batch.clean)
        per_pass = max(1, max_rows // b)
        for start in range(0, graph.n_sources, per_pass):
            sources = list(range(start, min(start + per_pass, graph.n_sources)))
            k = len(sources)
            deltas = [source_delta(setup, delta, s) for s in sources]
            rep = lambda t: t.repeat(k, *([1] * (t.dim() - 1))) if t.shape[0] == b else t  # noqa: E731

            def hook(stage, first, grad, sources=sources, deltas=deltas):
                g = grad.float().sum(2).view(k, b, *grad.shape[1:2], grad.shape[-1])
                for i, s in enumerate(sources):
                    if s < stage.n_upstream:
                        scores[s] += torch.einsum("npm,npm->m", deltas[i].expand_as(g[i]), g[i]) / steps

            for step in range(1, steps + 1):
                alpha = step / steps
                off = torch.zeros(k, graph.n_sources, graph.n_readers)
                for i, s in enumerate(sources):
                    off[i, s] = (1 - alpha) * valid[s]
                embeds = clean_embed.repeat(k, 1, 1).detach().requires_grad_(True)
                result = run(adapter, graph, batch.clean.repeat(k, 1), last=batch.clean_last.repeat(k),
                             ref=ref.map(rep), off=off.to(setup.device).repeat_interleave(b, 0), embeds=embeds,
                             grad_hook=hook)
                value = sum(setup.metric(result.logits[i * b:(i + 1) * b], batch, clean.logits).sum()
                            for i in range(k))
                value.backward()
        n_examples += b
    return (scores / n_examples).cpu()


def node_off_rows(graph, sources) -> torch.Tensor:
    """off masks [len(sources), n_sources, n_readers]: mask k switches every edge out of source k."""
    valid = torch.as_tensor(graph.valid, dtype=torch.float32)
    off = torch.zeros(len(sources), graph.n_sources, graph.n_readers)
    for k, s in enumerate(sources):
        off[k, s] = valid[s]
    return off


def exact_nodes(setup: Setup, max_rows: int = 512) -> torch.Tensor:
    graph = setup.graph
    return measured_effects(setup, graph.n_sources, lambda start, stop: node_off_rows(graph, range(start, stop)),
                            "exact (nodes)", max_rows)
