"""The attribution-graph file (JSON, `schema_version` 1; documented field by field in docs/graph-format.md).

    {"schema_version": 1, "kind": "feature_graph",
     "model": {...}, "transcoders": {...}, "prompt": str | null, "tokens": [int], "token_strings": [str],
     "settings": {...}, "scores": {...},
     "nodes": [{"id", "type", "layer", "pos", "feature", "activation", "influence", "cumulative", ...}],
     "edges": {"source": [node index], "target": [node index], "weight": [float]},
     "intervention": {...} (optional, from discovery/features/intervention.py)}

Nodes are the kept ones (every node with `pruned: false`), in the graph's node order (features,
errors, tokens, logits). Node ids: feature `{layer}_{feature}_{pos}` (circuit-tracer's), error
`err_{layer}_{pos}`, token embedding `E_{token id}_{pos}`, logit `L_{token id}`.
"""

from __future__ import annotations

import json
import math
import os

import torch

from ..core.errors import UserError
from .pruning import graph_scores, prune

SCHEMA_VERSION = 1
KIND = "feature_graph"


def node_table(graph) -> list[dict]:
    """Every node of the graph, in node order (without influences)."""
    nodes = []
    for (layer, pos, feat), act in zip(graph.features.tolist(), graph.activations.tolist()):
        nodes.append({"id": f"{layer}_{feat}_{pos}", "type": "feature", "layer": layer, "pos": pos, "feature": feat,
                      "activation": act})
    for layer in range(graph.n_layers):
        for pos in range(graph.n_pos):
            nodes.append({"id": f"err_{layer}_{pos}", "type": "error", "layer": layer, "pos": pos})
    for pos, (tok, text) in enumerate(zip(graph.tokens, graph.token_strings)):
        nodes.append({"id": f"E_{tok}_{pos}", "type": "embedding", "pos": pos, "token": tok, "text": text})
    last = graph.n_pos - 1
    for tok, text, p in zip(graph.logit_tokens, graph.logit_strings, graph.logit_probs.tolist()):
        nodes.append({"id": f"L_{tok}", "type": "logit", "layer": graph.n_layers, "pos": last, "token": tok,
                      "text": text, "prob": p})
    return nodes


def graph_document(graph, *, node_threshold: float = 0.8, edge_threshold: float = 0.98, no_prune: bool = False,
                   model: dict | None = None, transcoders: dict | None = None) -> dict:
    """The file's content: every node and nonzero edge with `no_prune`, else the pruned graph."""
    result = prune(graph, 1.0 if no_prune else node_threshold, 1.0 if no_prune else edge_threshold)
    replacement, completeness = graph_scores(graph)
    table = node_table(graph)
    for i, node in enumerate(table):
        node["influence"] = float(result.influence[i])
        node["cumulative"] = float(result.cumulative[i])
    keep = result.node_mask.clone()
    edge_mask = result.edge_mask & (graph.adjacency != 0)
    if no_prune:
        keep[:] = True
        edge_mask = graph.adjacency != 0
    index = torch.where(keep, torch.cumsum(keep.long(), 0) - 1, -1)  # node -> its place in the file's list
    nf, ns = graph.n_features, graph.n_sources
    t, s = edge_mask.nonzero(as_tuple=True)
    target_node = t.clone()
    target_node[t >= nf] = t[t >= nf] - nf + ns
    weights = graph.adjacency[t, s]
    return {
        "schema_version": SCHEMA_VERSION, "kind": KIND,
        "model": model or {}, "transcoders": transcoders or {},
        "prompt": graph.prompt, "tokens": list(graph.tokens), "token_strings": list(graph.token_strings),
        "settings": {**graph.info, "node_threshold": node_threshold, "edge_threshold": edge_threshold,
                     "pruned": not no_prune},
        "scores": {"replacement": replacement, "completeness": completeness, "n_active_features": graph.n_active,
                   "n_features_attributed": graph.n_features, "n_nodes_kept": int(keep.sum()),
                   "n_edges_kept": int(len(weights))},
        "nodes": [n for n, k in zip(table, keep.tolist()) if k],
        "edges": {"source": index[s].tolist(), "target": index[target_node].tolist(), "weight": weights.tolist()},
    }


def save_graph(document: dict, path) -> str:
    """Write atomically (a temporary file beside the target, then renamed)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(document, f, allow_nan=False)
    os.replace(tmp, path)
    return path


def load_graph(path) -> dict:
    """Read and check a graph file: one-line UserError for anything that is not one."""
    path = os.fspath(path)
    try:
        with open(path) as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UserError(f"graph file '{path}' not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"graph file '{path}' is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND:
        raise UserError(f"'{path}' is not an attribution graph file (no \"kind\": \"{KIND}\"); make one with "
                        "'circuitry attribute'")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"graph file '{path}' has schema_version {doc.get('schema_version')!r}; this version "
                        f"reads {SCHEMA_VERSION}")
    nodes, edges = doc.get("nodes"), doc.get("edges")
    if not isinstance(nodes, list) or not isinstance(edges, dict) or not all(
            isinstance(edges.get(k), list) for k in ("source", "target", "weight")):
        raise UserError(f"graph file '{path}': 'nodes' must be a list and 'edges' hold source/target/weight lists")
    n = len(nodes)
    if not len(edges["source"]) == len(edges["target"]) == len(edges["weight"]):
        raise UserError(f"graph file '{path}': edges.source, edges.target and edges.weight differ in length")
    for key in ("source", "target"):
        bad = next((v for v in edges[key] if not isinstance(v, int) or not 0 <= v < n), None)
        if bad is not None:
            raise UserError(f"graph file '{path}': edges.{key} holds {bad!r}, not a node index below {n}")
    bad = next((w for w in edges["weight"] if not isinstance(w, (int, float)) or not math.isfinite(w)), None)
    if bad is not None:
        raise UserError(f"graph file '{path}': edge weight {bad!r} is not a finite number")
    return doc
