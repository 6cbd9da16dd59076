"""A circuit in a notebook: its strongest edges, a networkx graph of its components, a matplotlib
drawing, and the viewer inline (the `Circuit` methods of the same names call these). Pure functions of
the circuit file's contents (networkx and matplotlib loaded when used), so they sit in core beside the
schema; repr_html alone reaches up to the viewer package, inside the function (tests/test_layering.py
lists that edge as pending).

Components are the nodes: `input`, heads `a{L}.h{H}` (and `a{L}.kv{G}` in a grouped-key/value graph),
MLPs `m{L}`, `logits`. An edge joins its source component to the component that reads it; the reader
slot (`q`, `k`, `v`, `mlp`, `logits`) is an edge attribute, so a head read through several slots by
the same source has several edges between the same pair (a MultiDiGraph, keyed by slot).
"""

from __future__ import annotations

import html
import math

SLOT_COLORS = {"q": "#1f77b4", "k": "#2ca02c", "v": "#9467bd", "mlp": "#ff7f0e", "logits": "#d62728"}


def top_edges(circuit, k: int = 10, *, in_circuit: bool | None = None, signed: bool = False) -> list:
    """The k edges with the largest |score| (signed: the most important by sign, as signed selection:
    most negative first for a higher-is-better metric, most positive first otherwise). Edges without a
    score are left out; in_circuit=True/False keeps only edges in / out of the circuit."""
    if k < 0:
        raise ValueError(f"k must be non-negative (got {k})")
    edges = [e for e in circuit.edges if e.score is not None and not math.isnan(e.score)
             and (in_circuit is None or e.in_circuit == in_circuit)]
    if signed:
        higher_is_better = _higher_is_better(circuit)
        key = (lambda e: e.score) if higher_is_better else (lambda e: -e.score)
    else:
        key = lambda e: -abs(e.score)  # noqa: E731
    return sorted(edges, key=key)[:k]


def node_scores_from_edges(circuit) -> dict[str, float]:
    """An edge-level circuit's node scores: a node's score is the sum of the scores of the edges out of
    it, every listed edge in or out of the circuit. For the gradient estimates (EAP, EAP-IG) that is
    exactly the node's own score (switching its whole output to the reference; README "Node and neuron
    circuits"); for measured edge scores it is the first-order estimate. Nodes with no scored edge out
    (the logits) have none. A large position-aware file lists only some edges: the sum is over those."""
    out: dict[str, float] = {}
    for e in circuit.edges:
        if e.score is not None and not math.isnan(e.score):
            out[e.source] = out.get(e.source, 0.0) + e.score
    return out


def top_nodes(circuit, k: int = 10, *, in_circuit: bool | None = None, signed: bool = False) -> list:
    """The k nodes with the largest |score| (signed as top_edges). Node and neuron levels: the nodes'
    own scores; an edge-level circuit (no node scores): copies of its nodes with `score` derived from
    the edges (node_scores_from_edges). Nodes without a score (the logits) are left out."""
    if k < 0:
        raise ValueError(f"k must be non-negative (got {k})")
    nodes = circuit.nodes
    if circuit.level == "edge" and all(n.score is None for n in nodes):
        derived = node_scores_from_edges(circuit)
        nodes = [n.model_copy(update={"score": derived[n.id]}) for n in nodes if n.id in derived]
    nodes = [n for n in nodes if n.score is not None and (in_circuit is None or n.in_circuit == in_circuit)]
    if signed:
        key = (lambda n: n.score) if _higher_is_better(circuit) else (lambda n: -n.score)
    else:
        key = lambda n: -abs(n.score)  # noqa: E731
    return sorted(nodes, key=key)[:k]


def _higher_is_better(circuit) -> bool:
    params = circuit.method.params
    if "higher_is_better" in params:
        return bool(params["higher_is_better"])
    return params.get("metric", circuit.metrics.metric) != "kl"


def to_networkx(circuit, *, all_edges: bool = False):
    """Components as nodes (kind, layer, head, in_circuit, score when scored), the circuit's edges (or
    every edge with all_edges=True) with name, slot, score, in_circuit. A DiGraph when each pair of
    components is joined by one edge, else a MultiDiGraph keyed by slot. Attributes are scalars
    (absent when unknown), so the graph writes to GraphML as it is."""
    import networkx as nx

    edges = [e for e in circuit.edges if all_edges or e.in_circuit]
    pairs = [(e.source, e.target) for e in edges]
    g = (nx.MultiDiGraph if len(set(pairs)) < len(pairs) else nx.DiGraph)()
    g.graph.update(model=circuit.model.name, task=circuit.task.name, method=circuit.method.name,
                   metric=circuit.metrics.metric)
    for node in circuit.nodes:
        attrs = {"kind": node.kind, "in_circuit": node.in_circuit}
        attrs.update({k: v for k, v in (("layer", node.layer), ("head", node.head),
                                        ("score", getattr(node, "score", None))) if v is not None})
        g.add_node(node.id, **attrs)
    for e in edges:
        attrs = {"name": e.name, "slot": e.slot, "in_circuit": e.in_circuit}
        if e.score is not None:
            attrs["score"] = e.score
        if g.is_multigraph():
            g.add_edge(e.source, e.target, key=e.slot, **attrs)
        else:
            g.add_edge(e.source, e.target, **attrs)
    return g


def layout(nodes) -> dict[str, tuple[float, float]]:
    """Positions for drawing: the input at the bottom, each layer's heads on one row with its MLP on the
    row above, the logits at the top; heads spread left to right."""
    pos = {}
    n_layers = 1 + max([n.layer for n in nodes if n.layer is not None], default=-1)
    per_row: dict[int, list] = {}
    for n in nodes:
        if n.kind == "input":
            row = 0
        elif n.kind == "logits":
            row = 2 * n_layers + 1
        elif n.kind == "mlp":
            row = 2 * n.layer + 2
        else:
            row = 2 * n.layer + 1
        per_row.setdefault(row, []).append(n.id)
    for row, ids in per_row.items():
        for i, node_id in enumerate(ids):
            pos[node_id] = ((i + 0.5) / len(ids) * 2 - 1 if len(ids) > 1 else 0.0, float(row))
    return pos


def plot(circuit, ax=None, *, all_nodes: bool = True, max_width: float = 4.0):
    """Draw the circuit's edges (width ~ |score|, colour by reader slot) between its components,
    laid out by layer; components out of the circuit are drawn faint (or not at all with
    all_nodes=False). Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    if ax is None:
        n_layers = circuit.model.n_layers
        _, ax = plt.subplots(figsize=(8, 1.2 + 0.9 * n_layers))
    nodes = [n for n in circuit.nodes if all_nodes or n.in_circuit]
    pos = layout(circuit.nodes)
    edges = [e for e in circuit.edges if e.in_circuit and e.source in pos and e.target in pos]
    big = max([abs(e.score) for e in edges if e.score is not None] or [1.0]) or 1.0
    segments = [[pos[e.source], pos[e.target]] for e in edges]
    widths = [0.4 + max_width * (abs(e.score) / big if e.score is not None else 0.0) for e in edges]
    ax.add_collection(LineCollection(segments, linewidths=widths, colors=[SLOT_COLORS[e.slot] for e in edges],
                                     alpha=0.7, zorder=1, label="edges"))
    inside = [n for n in nodes if n.in_circuit]
    outside = [n for n in nodes if not n.in_circuit]
    top = max([abs(n.score) for n in nodes if n.score is not None] or [0.0]) or 1.0
    size = lambda n, base: base if n.score is None else base * (0.4 + 2.6 * abs(n.score) / top)  # noqa: E731
    for group, color, base in ((outside, "#dddddd", 25), (inside, "#333333", 60)):
        if group:  # node and neuron levels: marker area ~ |node score|
            ax.scatter([pos[n.id][0] for n in group], [pos[n.id][1] for n in group], zorder=2, color=color,
                       s=[size(n, base) for n in group])
    for n in inside:
        ax.annotate(n.id, pos[n.id], xytext=(4, 4), textcoords="offset points", fontsize=7, zorder=3)
    slots = sorted({e.slot for e in edges}, key=list(SLOT_COLORS).index)
    if slots:
        ax.legend(handles=[Line2D([], [], color=SLOT_COLORS[s], label=s) for s in slots], loc="upper right",
                  fontsize=7, title="reader slot", title_fontsize=7)
    ax.set_xlim(-1.15, 1.15)
    ax.set_ylim(-0.5, 2 * circuit.model.n_layers + 1.5)
    ax.set_xticks([])
    ax.set_yticks([0] + [2 * layer + 1 for layer in range(circuit.model.n_layers)] + [2 * circuit.model.n_layers + 1])
    ax.set_yticklabels(["input"] + [f"layer {layer}" for layer in range(circuit.model.n_layers)] + ["logits"])
    m = circuit.metrics
    f = "n/a" if m.faithfulness is None else f"{m.faithfulness:.3f}"
    ax.set_title(f"{circuit.model.name} · {circuit.task.name} · {circuit.method.name}: {m.n_edges} edges, "
                 f"faithfulness {f}", fontsize=9)
    return ax


def repr_html(circuit, height: int = 640) -> str:
    """The viewer's self-contained page in an iframe (its own document: the page's script and ids
    never clash with the notebook's or another circuit's)."""
    from viewer import render_circuit  # the viewer package; imported only when a notebook shows a circuit

    page = render_circuit(circuit)
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:{int(height)}px;'
            'border:1px solid #ddd" sandbox="allow-scripts"></iframe>')
