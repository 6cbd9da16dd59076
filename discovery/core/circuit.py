"""The circuit file: a versioned, pydantic-validated JSON document (documented in docs/circuit-format.md)."""

from __future__ import annotations

import contextlib

import json
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UserError
from .graph import Graph

# One version line for plain and labeled files. 1.1: labels (labeling/); 1.2: level, node scores and neurons,
# position-aware circuits; 1.3: `warnings`, labels' `unverified` status with its reason and score intervals.
# Every 1.x file still reads.
SCHEMA_VERSION = "1.3"


class ModelInfo(BaseModel):
    name: str
    revision: str | None = None
    architecture: str
    model_type: str
    config_hash: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel_residual: bool
    dtype: str
    d_model: int | None = None  # residual width (MIB / EAP-IG graphs need it); optional: older files lack it


class ExampleRow(BaseModel):
    """One representative task row (the first), as the model saw it: what graph viewers that show one
    prompt (Neuronpedia, circuit-tracer) display. Probabilities are the model's softmax at the last
    prompt position, where the metric is read."""

    row: int = 0
    token_ids: list[int]
    tokens: list[str]  # each id decoded on its own (`<id>` for a model without a tokenizer)
    prompt: str  # the whole prompt decoded
    answer_id: int
    answer: str
    answer_prob: float
    wrong_id: int | None = None
    wrong: str | None = None
    wrong_prob: float | None = None


class TaskInfo(BaseModel):
    name: str
    source: str
    rows: int
    content_hash: str
    example: ExampleRow | None = None  # the first row's tokens and answer probability; optional


class MethodInfo(BaseModel):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class SelectionInfo(BaseModel):
    kind: Literal["top-n", "threshold", "greedy", "given", "acdc", "faithfulness", "edge-pruning"]
    # n for top-n / greedy, the threshold for threshold, tau for acdc, the target for faithfulness,
    # the target sparsity (or lam) for edge-pruning's learned mask
    value: int | float | None = None
    absolute: bool = True
    pruned: bool = True


class Node(BaseModel):
    id: str
    kind: Literal["input", "attention", "kv_head", "mlp", "logits"]
    layer: int | None = None
    head: int | None = None
    in_circuit: bool = False
    # node and neuron levels (schema 1.2): the node's score (the metric change when its output is switched
    # to the reference); at the neuron level its kept output dimensions and their scores, in that order
    score: float | None = None
    neurons: list[int] | None = None
    neuron_scores: list[float | None] | None = None


class Edge(BaseModel):
    name: str
    source: str
    target: str
    slot: Literal["q", "k", "v", "mlp", "logits"]
    score: float | None
    in_circuit: bool
    # position-aware circuits only (absent otherwise): where the source writes, and where the target
    # computes the output this edge feeds (for k/v: the query position)
    src_pos: int | None = Field(None, exclude_if=lambda v: v is None)
    dst_pos: int | None = Field(None, exclude_if=lambda v: v is None)


class PositionsInfo(BaseModel):
    """A position-aware circuit (discovery/engine/positions.py): its edges are at token positions 0..n-1."""
    n: int  # the prompts' length P
    names: list[str] | None = None  # a name per position, when the task's template gives them
    n_edges: int  # positional edges of the graph (every allowed position pair of every edge)
    listed: int  # of those, how many `edges` lists: every in-circuit one, then the highest |score| first
    limit: int  # the listing cap (all edges are listed when n_edges <= limit)


class CurvePoint(BaseModel):
    percent: float
    n_selected: int  # top-n edges chosen for this percentage
    n_edges: int  # edges left after pruning (what was evaluated)
    faithfulness: float | None


class Metrics(BaseModel):
    metric: str
    clean: float | None = None
    corrupted: float | None = None
    circuit: float | None = None
    faithfulness: float | None = None
    n_edges: int = 0
    n_nodes: int = 0
    n_neurons: int | None = None  # neuron level: neurons kept
    curve_signed: list[CurvePoint] = Field(default_factory=list)
    curve_absolute: list[CurvePoint] = Field(default_factory=list)
    cpr: float | None = None
    cmd: float | None = None


class Circuit(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    schema_version: str = SCHEMA_VERSION
    level: Literal["edge", "node", "neuron"] = "edge"  # what was scored and selected (files before 1.2: edge)
    model: ModelInfo
    task: TaskInfo
    method: MethodInfo
    selection: SelectionInfo
    nodes: list[Node]
    edges: list[Edge]
    metrics: Metrics
    positions: PositionsInfo | None = Field(None, exclude_if=lambda v: v is None)  # position-aware circuits (1.2)
    wall_time_s: float | None = None
    peak_memory_bytes: int | None = None
    device: str | None = None
    code_version: str
    warnings: list[str] = Field(default_factory=list)  # results that mean little (discovery/pipeline/sanity.py)
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def kv_edges(self) -> str:
        """How the file names a grouped-query model's k/v edges: "head" (per query head) or "grouped"
        (per key/value head: files before kv_edges was recorded, which always grouped them)."""
        recorded = self.method.params.get("kv_edges")
        if recorded is not None:
            return recorded
        return "grouped" if any(".kv" in e.target for e in self.edges) else "head"

    def graph_for(self, adapter) -> Graph:
        """The graph this file's edges are named in, for a model (adapter) of the circuit's shape: its
        kv_edges, and for a position-aware circuit the positional graph at its `positions.n` tokens."""
        graph = Graph.from_adapter(adapter, kv_edges=self.kv_edges)
        if self.positions is None:
            return graph
        from .positional_graph import PositionalGraph
        return PositionalGraph(graph, self.positions.n, [adapter.sliding_window(i) for i in range(graph.n_layers)],
                               self.positions.names)

    def in_circuit(self, graph: Graph) -> np.ndarray:
        """Bool per edge of `graph` (in its edge order); the file must be for a model of this shape."""
        m = self.model
        shape = (graph.n_layers, graph.n_heads, graph.n_kv_heads, graph.parallel)
        if (m.n_layers, m.n_heads, m.n_kv_heads, m.parallel_residual) != shape:
            raise UserError(
                f"the circuit was made for {m.name} ({m.n_layers} layers, {m.n_heads} heads, {m.n_kv_heads} "
                f"key/value heads) but this model has {shape[0]} layers, {shape[1]} heads, {shape[2]} key/value "
                "heads; evaluate it on a model of the same shape")
        self.check_graph()  # nodes and edges agree with the graph of that shape
        keep = np.zeros(graph.n_edges, dtype=bool)
        for edge in self.edges:
            idx = graph.edge_index.get(edge.name)
            if idx is None:
                raise UserError(
                    f"circuit edge '{edge.name}' does not exist in this model's graph (the circuit was made for "
                    f"{self.model.name}: {self.model.n_layers} layers, {self.model.n_heads} heads); use the same model")
            keep[idx] = edge.in_circuit
        return keep

    def __repr__(self) -> str:
        """One line: what was found, its size and faithfulness (the file's contents stay in its fields;
        `model_dump_json()` for all of it)."""
        m, sel = self.metrics, self.selection
        picked = sel.kind if sel.value is None else f"{sel.kind} {sel.value:g}"
        f = "n/a" if m.faithfulness is None else f"{m.faithfulness:.3f}"
        parts = [f"{self.model.name}{'@' + self.model.revision if self.model.revision else ''}",
                 f"{self.task.name} ({self.task.rows} rows)", f"{self.method.name}, {picked}"]
        size = f"{m.n_edges} of {self.n_graph_edges} edges, {m.n_nodes} nodes"
        if self.level != "edge":
            size = f"{self.level} level: " + size + (f", {m.n_neurons} neurons" if m.n_neurons is not None else "")
        extra = [f"{n} {what}{'s' if n != 1 else ''}" for n, what in
                 ((len(self.warnings), "warning"), (len(getattr(self, "labels", None) or []), "label")) if n]
        return (f"{type(self).__name__}({' · '.join(parts)}: {size}, faithfulness {f} ({m.metric})"
                + ("; " + ", ".join(extra) if extra else "") + ")")

    __str__ = __repr__

    @property
    def n_graph_edges(self) -> int:
        """Edges of the whole graph: the file lists every one, except a large position-aware graph's."""
        return self.positions.n_edges if self.positions is not None else len(self.edges)

    # --- in a notebook (discovery/core/notebook.py) ----------------------------------------------
    def top_edges(self, k: int = 10, *, in_circuit: bool | None = None, signed: bool = False) -> list[Edge]:
        """The k edges with the largest |score| (signed=True: by signed importance)."""
        from .notebook import top_edges
        return top_edges(self, k, in_circuit=in_circuit, signed=signed)

    def top_nodes(self, k: int = 10, *, in_circuit: bool | None = None, signed: bool = False) -> list[Node]:
        """The k nodes with the largest |score| (signed=True: by signed importance). Node and neuron
        levels: the nodes' own scores; an edge-level circuit: each node's score derived from its edges
        (the sum of its outgoing edges' scores, notebook.node_scores_from_edges)."""
        from .notebook import top_nodes
        return top_nodes(self, k, in_circuit=in_circuit, signed=signed)

    def to_networkx(self, *, all_edges: bool = False):
        """One node per component, the circuit's edges (all_edges: every edge) with the reader slot
        as an attribute; a MultiDiGraph when several slots join the same pair."""
        from .notebook import to_networkx
        return to_networkx(self, all_edges=all_edges)

    def plot(self, ax=None, **kwargs):
        """Draw the circuit with matplotlib (layered by layer; width ~ |score|); returns the Axes."""
        from .notebook import plot
        return plot(self, ax, **kwargs)

    def _repr_html_(self) -> str:
        from .notebook import repr_html
        return repr_html(self)

    def neuron_mask(self, graph: Graph, d_model: int) -> np.ndarray:
        """Kept neurons [n_sources, d_model] of a neuron-level circuit (nodes[].neurons)."""
        self.in_circuit(graph)  # the same shape checks
        keep = np.zeros((graph.n_sources, d_model), dtype=bool)
        for node in self.nodes:
            s = graph.source_index.get(node.id)
            if s is None or not node.neurons:
                continue
            if max(node.neurons) >= d_model or min(node.neurons) < 0:
                raise UserError(f"node '{node.id}' lists neuron {max(node.neurons)} but the model's outputs have "
                                f"{d_model} dimensions (0..{d_model - 1})")
            keep[s, node.neurons] = True
        return keep

    def save(self, path: str | os.PathLike) -> None:
        """Written atomically: a temporary file in the same directory, then renamed over `path` (a
        reader never sees half a file; a failed write leaves the old file)."""
        import tempfile

        from .errors import output_target

        target = Path(output_target(str(path)))  # through a symlink to its file, not over the link
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(self.model_dump_json(indent=1))
            os.chmod(tmp, (target.stat().st_mode & 0o777) if target.exists() else 0o644)  # mkstemp makes it 0600
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def check_graph(self, graph: Graph | None = None, where: str = "the circuit") -> None:
        """The file's nodes and edges exist in `graph` (default: the graph of the shape the file declares)
        and agree with it: no unknown node (a99.h99), an edge's source/target/slot those its name says,
        nodes and edges listed at all. One UserError naming the first problem."""
        m = self.model
        if graph is None:
            if min(m.n_layers, m.n_heads, m.n_kv_heads) < 1 or m.n_heads % m.n_kv_heads:
                raise UserError(f"{where}: model shape {m.n_layers} layers, {m.n_heads} heads, {m.n_kv_heads} "
                                "key/value heads is impossible")
            graph = Graph(m.n_layers, m.n_heads, m.n_kv_heads, m.parallel_residual, kv_edges=self.kv_edges)
        if not self.nodes:
            raise UserError(f"{where} lists no nodes; a circuit file lists every node of its model's graph")
        if not self.edges:
            raise UserError(f"{where} lists no edges; a circuit file lists the edges of its model's graph")
        known = set(graph.node_ids())
        for node in self.nodes:
            if node.id not in known:
                raise UserError(f"{where}: node '{node.id}' does not exist in the graph of {m.name} "
                                f"({m.n_layers} layers, {m.n_heads} heads)")
        missing = known - {n.id for n in self.nodes}
        if missing:
            raise UserError(f"{where} lists {len(known) - len(missing)} of the {len(known)} nodes of its graph "
                            f"(e.g. '{sorted(missing)[0]}' is missing)")
        positional = self.positions is not None
        for edge in self.edges:
            if edge.source not in known or edge.target not in known:
                bad = edge.source if edge.source not in known else edge.target
                raise UserError(f"{where}: edge '{edge.name}' has node '{bad}', which does not exist in the graph "
                                f"of {m.name} ({m.n_layers} layers, {m.n_heads} heads)")
            if positional:
                continue  # named per position pair: the positional graph (made with the model) checks those
            i = graph.edge_index.get(edge.name)
            if i is None:
                raise UserError(f"{where}: edge '{edge.name}' does not exist in the graph of {m.name} "
                                f"({m.n_layers} layers, {m.n_heads} heads)")
            d = graph.edge_dst[i]
            expected = (graph.sources[graph.edge_src[i]], graph.reader_owner[d], graph.reader_slot[d])
            if (edge.source, edge.target, edge.slot) != expected:
                raise UserError(f"{where}: edge '{edge.name}' says source '{edge.source}', target '{edge.target}', "
                                f"slot '{edge.slot}' but its name means {expected[0]} -> {expected[1]} "
                                f"({expected[2]})")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Circuit":
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            raise UserError(f"circuit file '{path}' not found") from None
        except OSError as exc:
            raise UserError(f"circuit file '{path}' cannot be read ({exc.strerror or type(exc).__name__})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"circuit file '{path}' is binary, not circuit JSON (a MIB / EAP-IG .pt graph is read "
                            "by export, evaluate and view when it is a torch file)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"circuit file '{path}' is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if isinstance(data, dict) and data.get("schema_version", SCHEMA_VERSION).split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise UserError(f"circuit file '{path}' has schema_version {data.get('schema_version')}; "
                            f"this version reads {SCHEMA_VERSION}")
        if not isinstance(data, dict):
            raise UserError(f"circuit file '{path}' holds a JSON {type(data).__name__}, not a circuit object")
        try:
            circuit = cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise UserError(f"circuit file '{path}': field '{where}': {err['msg']}") from None
        circuit.check_graph(where=f"circuit file '{path}'")
        return circuit


POSITIONAL_EDGES_LISTED = 50_000  # a position-aware file lists at most this many edges beyond the circuit's


def listed_edges(graph: Graph, scores, in_circuit) -> np.ndarray:
    """Indices of the edges a circuit file lists, in edge order: all of them, except for a positional graph
    with more than POSITIONAL_EDGES_LISTED edges: the in-circuit ones, then the highest |score| up to the cap."""
    n = graph.n_edges
    if graph.n_positions is None or n <= POSITIONAL_EDGES_LISTED:
        return np.arange(n)
    keep = np.asarray(in_circuit, bool).copy()
    rest = max(0, POSITIONAL_EDGES_LISTED - int(keep.sum()))
    if rest and scores is not None:
        imp = np.nan_to_num(np.abs(np.asarray(scores, np.float64)), nan=-1.0)
        imp[keep] = -np.inf
        keep[np.argsort(-imp, kind="stable")[:rest]] = True
    return np.flatnonzero(keep)


def build_edges(graph: Graph, scores, in_circuit) -> list[Edge]:
    scores = None if scores is None else np.asarray(scores, dtype=np.float64)
    positional = graph.n_positions is not None
    out = []
    for e in listed_edges(graph, scores, in_circuit):
        s, d = graph.edge_src[e], graph.edge_dst[e]
        pos = {"src_pos": int(graph.edge_src_pos[e]), "dst_pos": int(graph.edge_dst_pos[e])} if positional else {}
        out.append(Edge(name=graph.edge_name(e) if positional else graph.edge_names[e], source=graph.sources[s],
                        target=graph.reader_owner[d], slot=graph.reader_slot[d],
                        score=None if scores is None or np.isnan(scores[e]) else float(scores[e]),
                        in_circuit=bool(in_circuit[e]), **pos))
    return out


def positions_info(graph: Graph, listed: int) -> PositionsInfo | None:
    if graph.n_positions is None:
        return None
    return PositionsInfo(n=graph.n_positions, names=graph.position_names, n_edges=graph.n_edges, listed=listed,
                         limit=POSITIONAL_EDGES_LISTED)


def build_nodes(graph: Graph, in_circuit_nodes: set[str], node_scores=None, neurons=None,
                neuron_scores=None) -> list[Node]:
    """node_scores [n_sources]; neurons: kept [n_sources, d_model] bool with neuron_scores of that shape."""
    nodes = []
    for n in graph.node_ids():
        node = Node(**graph.node_info(n), in_circuit=n in in_circuit_nodes)
        s = graph.source_index.get(n)
        if s is not None and node_scores is not None:
            node.score = _finite_or_none(node_scores[s])
        if s is not None and neurons is not None:
            kept = np.flatnonzero(neurons[s])
            node.neurons = [int(i) for i in kept]
            node.neuron_scores = [_finite_or_none(neuron_scores[s, i]) for i in kept]
        nodes.append(node)
    return nodes


def _finite_or_none(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) or np.isinf(x) else x


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        v = version("circuitry")
    except PackageNotFoundError:
        v = "0+unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+g{sha}" if sha else v
