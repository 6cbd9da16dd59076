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


def layout(nodes, n_kv_heads: int | None = None) -> dict[str, tuple[float, float]]:
    """Positions as the viewer draws them (viewer/static/viewer.js `layout`), in units of one head column
    and one layer, y upward: head h of layer L at (h + 0.5 + gap * (h // group), L + 0.75), its layer's
    MLP in a column of its own right of the heads at (heads' right edge + 0.9, L + 1.25), the input
    below and the logits above at the heads' centre; in a grouped-query model (n_kv_heads groups, or the
    graph's `a{L}.kv{G}` nodes) the groups of query heads sit apart (gap 0.45 columns) and each key/value
    node sits under its group's centre, 0.35 below its layer's heads."""
    nodes = list(nodes)
    n_heads = 1 + max([n.head for n in nodes if n.kind == "attention" and n.head is not None], default=0)
    n_kv = 1 + max([n.head for n in nodes if n.kind == "kv_head" and n.head is not None], default=-1)
    n_layers = 1 + max([n.layer for n in nodes if n.layer is not None and n.kind != "logits"], default=-1)
    groups = n_kv or (n_kv_heads if n_kv_heads and n_kv_heads < n_heads and n_heads % n_kv_heads == 0 else 1)
    group = n_heads // groups
    gap = 0.45 if groups > 1 else 0.0
    head_x = lambda h: h + 0.5 + (h // group) * gap  # noqa: E731
    heads_right = n_heads + (groups - 1) * gap
    centre = heads_right / 2
    pos = {}
    for n in nodes:
        if n.kind == "input":
            pos[n.id] = (centre, 0.0)
        elif n.kind == "logits":
            pos[n.id] = (centre, n_layers + 1.0)
        elif n.kind == "attention":
            pos[n.id] = (head_x(n.head), n.layer + 0.75)
        elif n.kind == "kv_head":
            pos[n.id] = (head_x((n.head + 0.5) * group - 0.5), n.layer + 0.4)
        else:
            pos[n.id] = (heads_right + 0.9, n.layer + 1.25)
    return pos


def _short_label(label, limit: int) -> str:
    """A label as the viewer writes it on the graph: its role, "no role" for an unclassified one, or its
    first `limit` characters; '?' when it is not verified."""
    tags = [t for t in (label.role_tags or []) if t != "other"]
    text = str(label.label)
    if tags:
        text = tags[0].replace("_", " ")
    elif text.lower().startswith("unclassified"):
        text = "no role"
    elif text.lower().startswith("silent"):
        text = "silent"
    text = text.replace("MLP most active on ", "on ")
    text = text if len(text) <= limit else text[:limit - 1] + "\u2026"
    return text + ("" if label.status == "ok" else "?")


def plot(circuit, ax=None, *, all_nodes: bool = True, max_width: float = 4.0):
    """Draw the circuit laid out as the viewer draws it (`layout`): a row per layer's heads with the
    layer's MLP in its own column to the right, the input below and the logits above; edges with width
    ~ |score| and colour by reader slot; components out of the circuit faint (or not at all with
    all_nodes=False); each component of the circuit named, with its label when the circuit is labeled.
    Returns the matplotlib Axes."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    pos = layout(circuit.nodes, circuit.model.n_kv_heads)
    n_layers = circuit.model.n_layers
    width = max(x for x, _ in pos.values()) + 1.5
    if ax is None:
        _, ax = plt.subplots(figsize=(min(16.0, 2.0 + 0.75 * width), 1.5 + 0.9 * n_layers))
    nodes = [n for n in circuit.nodes if all_nodes or n.in_circuit]
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
                       s=[size(n, base) for n in group], marker="o")
    labels = {r.component: r for r in getattr(circuit, "labels", None) or []}
    for n in inside:
        beside = n.kind == "mlp"  # as the viewer: MLP labels to the right, head labels below
        text = n.id + (f"\n{_short_label(labels[n.id], 22 if beside else 11)}" if n.id in labels else "")
        ax.annotate(text, pos[n.id], xytext=(7, -3) if beside else (0, -9), textcoords="offset points", fontsize=6.5,
                    ha="left" if beside else "center", va="top", zorder=3)
    slots = sorted({e.slot for e in edges}, key=list(SLOT_COLORS).index)
    if slots:
        ax.legend(handles=[Line2D([], [], color=SLOT_COLORS[s], label=s) for s in slots], loc="upper right",
                  fontsize=7, title="reader slot", title_fontsize=7)
    ax.set_xlim(-0.3, width)
    ax.set_ylim(-0.6, n_layers + 1.6)
    ax.set_xticks([])
    rows = [(0.0, "input")] + [(y, t) for layer in range(n_layers)
                               for y, t in ((layer + 0.75, f"L{layer} attn"), (layer + 1.25, f"L{layer} mlp"))]
    rows.append((n_layers + 1.0, "logits"))
    ax.set_yticks([y for y, _ in rows])
    ax.set_yticklabels([t for _, t in rows], fontsize=7)
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
