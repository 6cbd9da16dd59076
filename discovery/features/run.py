"""One call from a model and transcoders to a graph file's content (what `circuitry attribute` runs).

    from discovery import load_model
    from discovery.features.run import run_attribution
    from discovery.features.graph_file import save_graph
    model = load_model("toy:ioi")
    doc = run_attribution(model, "toy:ioi", prompt="When Mary and John went to the store, John gave a drink to")
    save_graph(doc, "g.json")
"""

from __future__ import annotations

from typing import Callable

from ..model.adapters import LoadedModel
from .attribution import DEFAULT_BUDGET, attribute
from .graph_file import graph_document


def transcoder_info(tc, source) -> dict:
    return {"source": str(source) if isinstance(source, str) else None, "scan": getattr(tc, "scan", None),
            "kind": "cross_layer_transcoder" if tc.cross_layer else "transcoder_set", "skip": bool(tc.has_skip),
            "activation": tc.activation, "n_layers": tc.n_layers, "n_features": tc.n_features,
            "input_hook": getattr(tc, "input_hook", None), "output_hook": getattr(tc, "output_hook", None)}


def model_info(model: LoadedModel) -> dict:
    a = model.adapter
    return {"name": model.name, "revision": model.revision, "family": model.config.model_type,
            "architecture": model.architecture, "n_layers": a.n_layers, "d_model": a.d_model,
            "config_hash": model.config_hash(), "dtype": str(a.dtype).replace("torch.", "")}


def run_attribution(model: LoadedModel, transcoders, *, prompt: str | None = None, prompt_ids: list[int] | None = None,
                    desired_logit_prob: float = 0.95, max_logits: int = 10, max_feature_nodes: int | None = None,
                    batch_size: int = 256, memory_budget: int = DEFAULT_BUDGET, node_threshold: float = 0.8,
                    edge_threshold: float = 0.98, no_prune: bool = False, check: int = 10,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """The graph document (graph_file.py) of one prompt; `transcoders` a Transcoders module or a source
    for load_transcoders (folder, toy:NAME, hub id). check: intervention check on that many features."""
    from .transcoders import load_transcoders

    tc = transcoders if not isinstance(transcoders, str) else load_transcoders(transcoders, model=model)
    graph = attribute(model, tc, prompt, prompt_ids=prompt_ids, desired_logit_prob=desired_logit_prob,
                      max_logits=max_logits, max_feature_nodes=max_feature_nodes, batch_size=batch_size,
                      memory_budget=memory_budget, progress=progress)
    doc = graph_document(graph, node_threshold=node_threshold, edge_threshold=edge_threshold, no_prune=no_prune,
                         model=model_info(model), transcoders=transcoder_info(tc, transcoders))
    if check:
        from .intervention import intervention_check

        doc["intervention"] = intervention_check(model, tc, graph, doc, n_features=check)
    return doc
