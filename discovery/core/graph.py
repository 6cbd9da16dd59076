"""The computational graph of a transformer at the level of heads, MLPs and their reader slots.

Writers (sources) are `input`, every head `a{L}.h{H}` and every MLP `m{L}`; readers are each head's
q, k and v inputs, each MLP's input and the logits. Edge names follow the MIB / EAP-IG convention
(`a0.h3->a2.h0<v>`, `a1.h2->m3`, `m3->logits`).

Grouped-query attention (kv_edges):
- "head" (the default, as MIB and the EAP-IG library): every query head has its own k and v readers
  (`a0.h2->a1.h3<k>`). Switching such an edge changes the key (value) input of that one query head
  only; the other heads of its group keep theirs. The model's shared k/v projection is applied to
  each head's input as it is (the patching core projects per head only where inputs differ).
- "grouped": the k and v readers belong to the key/value head the group shares (`a1.kv0<k>`), the
  model's own structure; switching such an edge changes the key (value) of every head of the group.
  Grouped edge g equals switching the per-head edges of all its group's heads together, so (to first
  order, hence exactly for the gradient estimates EAP and EAP-IG) the grouped score of
  `s->aL.kvG<k>` is the sum of the per-head scores of `s->aL.hH<k>` over the heads H of group G.
With one key/value head per query head both modes give the same graph.

Index layout, shared with the patching core: sources are ordered input, then per layer its heads and
its MLP; the writers upstream of any reader are therefore a prefix of that order, so a mask over
edges is a dense [n_sources, n_readers] matrix whose valid part for a stage is `[:n_upstream, slots]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

import numpy as np

from .errors import UserError
from .nodes import group_heads, head_id, kv_id, mlp_id, node_info, parse_node, reader_name


@dataclass(frozen=True)
class Stage:
    """A point of the residual stream read by a group of readers: one layer's attention inputs,
    one layer's MLP input, or the logits."""

    kind: str  # "attn" | "mlp" | "logits"
    layer: int  # n_layers for the logits
    start: int  # first reader index
    stop: int  # one past the last reader index
    n_upstream: int  # sources [0, n_upstream) write into this stage


@dataclass(frozen=True)
class LayerSources:
    """One layer's writers upstream of a stage (Graph.upstream): the source rows of its heads, and of
    its MLP unless the stage reads before the MLP writes (None)."""

    layer: int
    heads: slice
    mlp: int | None


KV_EDGES = ("head", "grouped")


class Graph:
    n_positions = None  # a positional graph (discovery/engine/positions.py) has one edge per position pair

    def __init__(self, n_layers: int, n_heads: int, n_kv_heads: int | None = None, parallel: bool = False,
                 kv_edges: str = "head"):
        self.n_layers, self.n_heads = n_layers, n_heads
        self.n_kv_heads = n_kv_heads or n_heads
        if n_heads % self.n_kv_heads:
            raise ValueError(f"{n_heads} query heads cannot be grouped over {self.n_kv_heads} key/value heads")
        if kv_edges not in KV_EDGES:
            raise UserError(f"unknown kv_edges '{kv_edges}'; choose one of {', '.join(KV_EDGES)}")
        self.parallel = parallel
        self.gqa = self.n_kv_heads != n_heads  # the model shares keys/values over groups of query heads
        self.grouped = self.gqa and kv_edges == "grouped"  # ... and the graph's k/v readers are per group
        self.kv_edges = kv_edges if self.gqa else "head"
        self.group_size = n_heads // self.n_kv_heads
        self.n_kv_readers = self.n_kv_heads if self.grouped else n_heads  # k (and v) readers per layer

        self.sources: list[str] = ["input"]
        for layer in range(n_layers):
            self.sources += [head_id(layer, h) for h in range(n_heads)] + [mlp_id(layer)]
        self.source_index = {name: i for i, name in enumerate(self.sources)}

        self.readers: list[str] = []  # reader slot names, e.g. "a1.h0<q>", "m1", "logits"
        self.reader_owner: list[str] = []  # the node a reader belongs to ("a1.h0", "a1.kv0", "m1", "logits")
        self.reader_slot: list[str] = []  # "q" | "k" | "v" | "mlp" | "logits"
        self.stages: list[Stage] = []
        kv_prefix = "kv" if self.grouped else "h"
        for layer in range(n_layers):
            start, before = len(self.readers), 1 + layer * (n_heads + 1)
            for slot, count, prefix in (("q", n_heads, "h"), ("k", self.n_kv_readers, kv_prefix),
                                        ("v", self.n_kv_readers, kv_prefix)):
                for h in range(count):
                    self._add_reader(kv_id(layer, h) if prefix == "kv" else head_id(layer, h), slot)
            self.stages.append(Stage("attn", layer, start, len(self.readers), before))
            start = len(self.readers)
            self._add_reader(mlp_id(layer), "mlp")
            self.stages.append(Stage("mlp", layer, start, start + 1, before if parallel else before + n_heads))
        self._add_reader("logits", "logits")
        self.stages.append(Stage("logits", n_layers, len(self.readers) - 1, len(self.readers), len(self.sources)))
        self.reader_index = {name: i for i, name in enumerate(self.readers)}

        upstream = np.zeros(len(self.readers), dtype=np.int64)
        for st in self.stages:
            upstream[st.start:st.stop] = st.n_upstream
        self.valid = np.arange(len(self.sources))[:, None] < upstream[None, :]  # [n_src, n_readers]
        # Edge order: by reader (in forward order), then by source.
        dst, src = np.nonzero(self.valid.T)
        self.edge_src, self.edge_dst = src, dst
        self.edge_names = [f"{self.sources[s]}->{self.readers[d]}" for s, d in zip(src, dst)]
        self.edge_index = {name: i for i, name in enumerate(self.edge_names)}

    @classmethod
    def from_adapter(cls, adapter, kv_edges: str = "head") -> "Graph":
        return cls(adapter.n_layers, adapter.n_heads, adapter.n_kv_heads, adapter.parallel, kv_edges=kv_edges)

    def kv_weight_heads(self) -> list[int]:
        """For each k (and v) reader of a layer, the model's key/value head whose projection it uses."""
        return list(range(self.n_kv_heads)) if self.grouped else [h // self.group_size for h in range(self.n_heads)]

    def _add_reader(self, owner: str, slot: str) -> None:
        self.readers.append(reader_name(owner, slot))
        self.reader_owner.append(owner)
        self.reader_slot.append(slot)

    # --- sizes and conversions --------------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return len(self.edge_names)

    @property
    def n_sources(self) -> int:
        return len(self.sources)

    @property
    def n_readers(self) -> int:
        return len(self.readers)

    def edge_mask_matrix(self, in_circuit: np.ndarray) -> np.ndarray:
        """Edge vector [n_edges] (bool) -> [n_sources, n_readers] bool matrix."""
        matrix = np.zeros(self.valid.shape, dtype=bool)
        matrix[self.edge_src, self.edge_dst] = np.asarray(in_circuit, dtype=bool)
        return matrix

    def edge_vector(self, matrix) -> np.ndarray:
        """[n_sources, n_readers] matrix -> per-edge vector in edge order."""
        return np.asarray(matrix)[self.edge_src, self.edge_dst]

    def edge_coords(self) -> tuple:
        """Index arrays of the edges into a mask or score matrix (shape `valid.shape`), in edge order."""
        return self.edge_src, self.edge_dst

    def owner_of_kv(self, layer: int, head: int) -> str:
        """The node owning query head `head`'s k and v readers (its own unless the graph is grouped)."""
        return kv_id(layer, head // self.group_size) if self.grouped else head_id(layer, head)

    def heads_of(self, owner: str) -> list[str]:
        """The query heads a reader's owner node stands for: a key/value head's group (grouped graphs),
        else the node itself."""
        n = parse_node(owner)
        return group_heads(n.layer, n.head, self.group_size) if n.kind == "kv_head" else [owner]

    def node_ids(self) -> list[str]:
        """Every component node: input, heads (and key/value heads when grouped), MLPs, logits."""
        nodes = ["input"]
        for layer in range(self.n_layers):
            nodes += [head_id(layer, h) for h in range(self.n_heads)]
            if self.grouped:
                nodes += [kv_id(layer, g) for g in range(self.n_kv_heads)]
            nodes.append(mlp_id(layer))
        return nodes + ["logits"]

    @staticmethod
    def node_info(node: str) -> dict:
        return node_info(node)

    # --- topology ---------------------------------------------------------------------------
    def head_rows(self, layer: int) -> tuple[int, int]:
        """Source index range [start, stop) of a layer's heads; its MLP is the row `stop`."""
        start = 1 + layer * (self.n_heads + 1)
        return start, start + self.n_heads

    def upstream(self, stage: Stage) -> Iterator[LayerSources]:
        """The layers whose heads write into `stage`, in source order (the embedding, row 0, always
        does): each with its heads' rows and its MLP's row when the MLP writes before the stage reads."""
        for layer in range(self.n_layers):
            h0, h1 = self.head_rows(layer)
            if h0 >= stage.n_upstream:
                return
            yield LayerSources(layer, slice(h0, h1), h1 if h1 < stage.n_upstream else None)

    @cached_property
    def readers_of(self) -> list[list[int]]:
        """For each source, the reader slots whose values it consumes (its q/k/v, or its MLP input; a
        key/value head's k/v readers for every query head of its group)."""
        out: list[list[int]] = [[] for _ in self.sources]
        for r, (owner, slot) in enumerate(zip(self.reader_owner, self.reader_slot)):
            if slot != "logits":
                for node in self.heads_of(owner) if slot in ("k", "v") else [owner]:
                    out[self.source_index[node]].append(r)
        return out

    @cached_property
    def reader_sources(self) -> list[list[int]]:
        """For each reader, the source indices of the node it belongs to (a grouped key/value reader:
        every query head of its group; logits: none)."""
        return [[] if slot == "logits" else [self.source_index[n] for n in self.heads_of(owner)]
                for owner, slot in zip(self.reader_owner, self.reader_slot)]

    def to_networkx(self, scores=None, in_circuit=None):
        """A DiGraph whose edges are exactly this graph's edges, with scalar attributes (GraphML-safe).

        A head reads through three slots, so each slot is its own reader node (`a1.h0<q>`, kind
        `reader`) joined to its head by an `internal` edge; MLPs and the logits read through one
        slot and are their own reader. Key/value heads of a grouped model feed every query head of
        their group."""
        import networkx as nx

        g = nx.DiGraph(n_layers=self.n_layers, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
                       parallel=self.parallel, kv_edges=self.kv_edges)
        for node in self.node_ids():
            info = self.node_info(node)
            g.add_node(node, kind=info["kind"], layer=-1 if info["layer"] is None else info["layer"],
                       head=-1 if info["head"] is None else info["head"])
        for name, owner, slot in zip(self.readers, self.reader_owner, self.reader_slot):
            if name != owner:
                g.add_node(name, kind="reader", slot=slot, owner=owner)
                g.add_edge(name, owner, internal=True, slot=slot)
                if parse_node(owner).kind == "kv_head":  # a key/value head feeds its group's query heads
                    for head in self.heads_of(owner):
                        g.add_edge(owner, head, internal=True, slot="kv")
        for i, (s, d) in enumerate(zip(self.edge_src, self.edge_dst)):
            attrs = {"name": self.edge_names[i], "slot": self.reader_slot[d], "internal": False}
            if scores is not None:
                attrs["score"] = float(scores[i])
            if in_circuit is not None:
                attrs["in_circuit"] = bool(in_circuit[i])
            g.add_edge(self.sources[s], self.readers[d], **attrs)
        return g
