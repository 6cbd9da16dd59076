"""Read a MIB / EAP-IG graph (`Graph.to_json` JSON or `Graph.to_pt` file, e.g. a MIB baseline circuit)
as a circuitry Circuit over a given graph, so `circuitry evaluate` and `circuitry view` take it.

Mapping: an EAP-IG edge name is a circuitry edge name (`input->a0.h1<q>`, `a1.h2->m3`, `m3->logits`).
The circuit is exactly the edges with `in_graph` true; scores become circuitry's (`common.loss_sign`
undone, with the metric taken as logit_diff, MIB's). In a graph that groups k/v per key/value head
(`a2.kv0<k>`), the query heads of a group must agree: the group's edge is in the circuit when all of
its query heads' edges are, and its score is their sum; a group split by the file is refused. The
file's cfg must match the model: same `n_layers`, `n_heads` and `parallel_attn_mlp` (and `d_model`
when both are known); else a one-line error says both shapes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ...core.errors import UserError
from ...core.nodes import group_heads, parse_node, reader_name, split_edge
from . import mib


class MibGraph:
    """A parsed MIB / EAP-IG graph file: its cfg and, per edge name, (score, in_graph)."""

    def __init__(self, path: str, cfg: dict, edges: dict[str, tuple[float, bool]],
                 node_scores: dict[str, float] | None = None, neurons: dict[str, tuple[list, list | None]] | None = None):
        self.path, self.cfg, self.edges = path, cfg, edges
        self.node_scores, self.neurons = node_scores or {}, neurons or {}
        try:
            self.n_layers, self.n_heads = int(cfg["n_layers"]), int(cfg["n_heads"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"MIB graph '{path}': cfg needs n_layers and n_heads (got keys {sorted(cfg)[:8]})") from None
        self.parallel = bool(cfg.get("parallel_attn_mlp", False))
        self.d_model = cfg.get("d_model")
        known = {name for name, _, _ in mib.edges(self.n_layers, self.n_heads, self.parallel)}
        for name in edges:
            if name not in known:
                raise UserError(f"MIB graph '{path}': edge '{name}' is not an edge of the graph its cfg describes "
                                f"({self.n_layers} layers, {self.n_heads} heads)")

    def shape(self) -> str:
        par = ", parallel attention/MLP" if self.parallel else ""
        width = f", d_model {self.d_model}" if self.d_model else ""
        return f"{self.n_layers} layers, {self.n_heads} heads{par}{width}"

    def check_shape(self, graph, d_model: int | None = None) -> None:
        same = (self.n_layers, self.n_heads, self.parallel) == (graph.n_layers, graph.n_heads, graph.parallel)
        if same and self.d_model and d_model and int(self.d_model) != int(d_model):
            same = False
        if not same:
            par = ", parallel attention/MLP" if graph.parallel else ""
            width = f", d_model {d_model}" if d_model else ""
            raise UserError(f"MIB graph '{self.path}' is for a model with {self.shape()} but this model has "
                            f"{graph.n_layers} layers, {graph.n_heads} heads{par}{width}; use a model of that shape")

    def to_circuit(self, graph, model_info=None):
        """The file as a Circuit over `graph` (a discovery.core.graph.Graph of the target model)."""
        from ...core.circuit import (Circuit, MethodInfo, Metrics, ModelInfo, SelectionInfo, TaskInfo, build_edges,
                               build_nodes, code_version)
        from ...pipeline.selection import nodes_in_circuit

        self.check_shape(graph, getattr(model_info, "d_model", None))
        size = graph.n_heads // graph.n_kv_heads
        scores = np.zeros(graph.n_edges)
        keep = np.zeros(graph.n_edges, dtype=bool)
        for i, name in enumerate(graph.edge_names):
            src, owner, slot = split_edge(name)
            if parse_node(owner).kind == "kv_head":  # a grouped k/v reader: the query heads of its group
                kv = parse_node(owner)
                members = [f"{src}->{reader_name(h, slot)}" for h in group_heads(kv.layer, kv.head, size)]
            else:
                members = [name]
            values = [self.edges.get(m, (0.0, False)) for m in members]
            flags = {flag for _, flag in values}
            if len(flags) > 1:
                raise UserError(f"MIB graph '{self.path}' keeps only some query heads' edges of the grouped k/v edge "
                                f"'{name}'; this model's graph groups k/v per key/value head, so the circuit cannot be "
                                "represented here (use per-query-head k/v edges)")
            keep[i] = flags == {True}
            scores[i] = -sum(score for score, _ in values)  # MIB scores are changes of the loss (-logit_diff)
        if model_info is None:
            model_info = ModelInfo(name=Path(self.path).stem, architecture="unknown (MIB / EAP-IG graph)",
                                   model_type="unknown", config_hash="", n_layers=graph.n_layers,
                                   n_heads=graph.n_heads, n_kv_heads=graph.n_kv_heads,
                                   parallel_residual=graph.parallel, dtype="unknown",
                                   d_model=int(self.d_model) if self.d_model else None)
        nodes = nodes_in_circuit(graph, keep)
        level, node_kw = "edge", {}
        if self.node_scores:  # MIB scores are loss changes: negated back, as the edge scores
            level = "node"
            node_kw["node_scores"] = np.array([-self.node_scores.get(s, np.nan) for s in graph.sources])
        if self.neurons:
            level = "neuron"
            width = len(next(iter(self.neurons.values()))[0])
            mask = np.zeros((graph.n_sources, width), dtype=bool)
            nscores = np.full((graph.n_sources, width), np.nan)
            for name, (kept, values) in self.neurons.items():
                s = graph.source_index.get(name)
                if s is None or len(kept) != width:
                    raise UserError(f"MIB graph '{self.path}': node '{name}' has {len(kept)} neurons, expected {width}")
                mask[s] = np.asarray(kept, dtype=bool)
                if values is not None:
                    nscores[s] = -np.asarray(values, dtype=np.float64)
            node_kw.update(neurons=mask, neuron_scores=nscores)
        return Circuit(
            level=level,
            model=model_info,
            task=TaskInfo(name="unknown", source="<MIB graph: no task>", rows=0, content_hash=""),
            method=MethodInfo(name="imported-mib", params={"source": str(self.path), "kv_edges": graph.kv_edges}),
            selection=SelectionInfo(kind="given", value=None, absolute=True, pruned=False),
            nodes=build_nodes(graph, nodes, **node_kw), edges=build_edges(graph, scores, keep),
            metrics=Metrics(metric="logit_diff", n_edges=int(keep.sum()), n_nodes=len(nodes),
                            n_neurons=int(node_kw["neurons"].sum()) if "neurons" in node_kw else None),
            code_version=code_version())


def _from_json(path: str, d) -> MibGraph:
    edges = {}
    for name, info in d["edges"].items():
        if not isinstance(info, dict) or "in_graph" not in info:
            raise UserError(f"MIB graph '{path}': edge '{name}' must be an object with in_graph (and score)")
        score = info.get("score")
        edges[name] = (float(score) if isinstance(score, (int, float)) else 0.0, bool(info["in_graph"]))
    node_scores, neurons = {}, {}
    for name, node in (d.get("nodes") or {}).items():
        if not isinstance(node, dict):
            raise UserError(f"MIB graph '{path}': node '{name}' must be an object {{\"in_graph\": ...}}")
        if isinstance(node.get("score"), (int, float)) and node["score"] == node["score"]:  # NaN: unscored
            node_scores[name] = float(node["score"])
        if node.get("neurons") is not None:
            kept, values = list(node["neurons"]), node.get("neurons_scores")
            if kept and isinstance(kept[0], list):  # a head's entry holds its layer's rows (to_json's slice)
                head = parse_node(name).head if parse_node(name).kind == "attention" else 0
                kept, values = kept[head], (values[head] if values is not None else None)
            neurons[name] = (kept, values)
    return MibGraph(path, d["cfg"], edges, node_scores, neurons)


def _from_pt(path: str) -> MibGraph:
    import torch

    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torch file that is not a plain dict of tensors, or not a torch file at all
        raise UserError(f"'{path}' is not a MIB / EAP-IG .pt graph ({type(exc).__name__}: {str(exc)[:80]})") from None
    need = ("cfg", "src_nodes", "dst_nodes", "edges_in_graph")
    if not isinstance(d, dict) or any(k not in d for k in need):
        raise UserError(f"'{path}' is not a MIB / EAP-IG .pt graph; it needs the keys {', '.join(need)}")
    in_graph = d["edges_in_graph"].bool()
    scores = d.get("edges_scores")
    scores = torch.zeros(in_graph.shape) if scores is None else scores.float()
    if in_graph.shape != (len(d["src_nodes"]), len(d["dst_nodes"])) or scores.shape != in_graph.shape:
        raise UserError(f"MIB graph '{path}': edges_in_graph / edges_scores must be [len(src_nodes), len(dst_nodes)]")
    cfg = d["cfg"]
    src_index = {n: i for i, n in enumerate(d["src_nodes"])}
    dst_index = {n: i for i, n in enumerate(d["dst_nodes"])}
    edges = {}
    for name, _, _ in mib.edges(int(cfg["n_layers"]), int(cfg["n_heads"]), bool(cfg.get("parallel_attn_mlp"))):
        parent, child = name.split("->")
        if parent in src_index and child in dst_index:
            f, b = src_index[parent], dst_index[child]
            edges[name] = (float(scores[f, b]), bool(in_graph[f, b]))
    node_scores, neurons = {}, {}
    if d.get("nodes_scores") is not None:
        node_scores = {n: float(v) for n, v in zip(d["src_nodes"], d["nodes_scores"].tolist()) if v == v}  # not NaN
    if d.get("neurons_in_graph") is not None:
        ns = d.get("neurons_scores")
        neurons = {n: (d["neurons_in_graph"][i].bool().tolist(), None if ns is None else ns[i].float().tolist())
                   for i, n in enumerate(d["src_nodes"])}
    return MibGraph(path, dict(cfg), edges, node_scores, neurons)


def read_mib(path: str | os.PathLike) -> MibGraph | None:
    """The MIB graph in `path` (JSON, or a torch file by its content, whatever the suffix), or None when
    the file is a circuitry circuit file (or not JSON: the caller's own loader then reports it)."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(b"PK") or head[:1] == b"\x80":  # torch.save's zip archive, or a legacy pickle
        return _from_pt(path)
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(d, dict) and isinstance(d.get("cfg"), dict) and isinstance(d.get("edges"), dict):
        return _from_json(path, d)
    return None
