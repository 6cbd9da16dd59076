"""An independent reader of MIB / EAP-IG graph files, written from the EAP-IG library's graph.py
(hannamw/EAP-IG, src/eap/graph.py): the index arithmetic of `Graph._forward_index` /
`_backward_index`, the edge set of `Graph.from_model`, and what `from_json` / `from_pt` require of a
file (the failures the issue saw: KeyError 'd_model', a node that is not `{"in_graph": ...}`).
It does not use circuitry's exporter; tests compare the two."""

import json

import numpy as np
import torch


class RefGraph:
    def __init__(self, cfg: dict):
        # from_model(cfg, neuron_level=True, node_scores=True) reads all four keys
        self.L, self.H = cfg["n_layers"], cfg["n_heads"]
        self.parallel, self.d_model = cfg["parallel_attn_mlp"], cfg["d_model"]
        self.n_forward = 1 + self.L * (self.H + 1)
        self.n_backward = self.L * (3 * self.H + 1) + 1
        self.scores = np.zeros((self.n_forward, self.n_backward), dtype=np.float32)
        self.in_graph = np.zeros((self.n_forward, self.n_backward), dtype=bool)
        self.nodes_in_graph = np.zeros(self.n_forward, dtype=bool)
        self.real = np.zeros((self.n_forward, self.n_backward), dtype=bool)
        self.edges = {}
        for layer in range(self.L):
            first = 1 + layer * (self.H + 1)
            attn_upstream = first  # every forward node before this layer's heads
            mlp_upstream = first if self.parallel else first + self.H
            for h in range(self.H):
                for qi, slot in enumerate("qkv"):
                    b = layer * (3 * self.H + 1) + qi * self.H + h
                    for f in range(attn_upstream):
                        self._edge(f, b, f"{self.fwd_name(f)}->a{layer}.h{h}<{slot}>")
            b = layer * (3 * self.H + 1) + 3 * self.H
            for f in range(mlp_upstream):
                self._edge(f, b, f"{self.fwd_name(f)}->m{layer}")
        for f in range(self.n_forward):
            self._edge(f, self.n_backward - 1, f"{self.fwd_name(f)}->logits")
        self.node_names = [self.fwd_name(f) for f in range(self.n_forward)] + ["logits"]

    def fwd_name(self, f: int) -> str:
        if f == 0:
            return "input"
        layer, k = divmod(f - 1, self.H + 1)
        return f"m{layer}" if k == self.H else f"a{layer}.h{k}"

    def _edge(self, f, b, name):
        self.edges[name] = (f, b)
        self.real[f, b] = True

    @classmethod
    def from_json(cls, path):
        d = json.loads(open(path).read())
        assert all(k in d for k in ("cfg", "nodes", "edges")), "Bad input JSON format - Missing keys"
        g = cls(d["cfg"])
        index = {n: i for i, n in enumerate(g.node_names)}
        for name, node in d["nodes"].items():
            if name == "logits":
                continue
            g.nodes_in_graph[index[name]] = node["in_graph"]  # KeyError / TypeError as EAP-IG's
        for name, info in d["edges"].items():
            f, b = g.edges[name]  # KeyError for a name EAP-IG's graph does not have
            g.scores[f, b] = info["score"] if "score" in info else 0.0
            g.in_graph[f, b] = info["in_graph"]
        return g

    @classmethod
    def from_pt(cls, path):
        d = torch.load(path)  # torch's default: weights_only=True
        for key in ("cfg", "src_nodes", "dst_nodes", "edges_scores", "edges_in_graph", "nodes_in_graph"):
            assert key in d, key
        assert d["edges_scores"].shape == d["edges_in_graph"].shape
        g = cls(d["cfg"])
        g.in_graph[:] = d["edges_in_graph"].numpy()
        g.scores[:] = d["edges_scores"].numpy()
        g.nodes_in_graph[:] = d["nodes_in_graph"].numpy()
        g.src_nodes, g.dst_nodes = d["src_nodes"], d["dst_nodes"]
        return g

    def edge(self, name):
        f, b = self.edges[name]
        return float(self.scores[f, b]), bool(self.in_graph[f, b])

    def in_graph_names(self) -> set[str]:
        return {name for name, (f, b) in self.edges.items() if self.in_graph[f, b]}
