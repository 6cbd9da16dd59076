"""networkx node-link JSON: what `networkx.node_link_graph(d)` reads with its defaults (networkx >= 3.4
names the edge list `edges`), giving a MultiDiGraph with one edge per reader slot.

- top level: `directed` true, `multigraph` true, `graph` (model, revision, task, method, metric,
  faithfulness, n_layers, n_heads, n_kv_heads; only scalars), `nodes`, `edges`.
- `nodes[]`: `id` (circuitry node id), `kind`, `layer` and `head` (-1 where they do not apply), and for a
  labeled component `label`, `description`, `role_tags` (comma-separated: attributes stay scalar, so the
  same graph also writes as GraphML), `label_status`, `label_confidence`.
- `edges[]`: `source`, `target` (the reading node: a head, a key/value head, an MLP, the logits), `key`
  (the slot: `q`, `k`, `v`, `mlp`, `logits`; a head's three slots are three parallel edges; in a
  position-aware circuit `slot[src_pos->dst_pos]`, with `src_pos` and `dst_pos` attributes), `name`
  (the edge name), `score` (NaN-free: null scores are left out), `in_circuit`.
By default the circuit's nodes and edges only; `all_edges=True` writes every edge of the graph, with
`in_circuit` telling the circuit apart.
"""

from __future__ import annotations

from .common import labels


def _scalar_graph_attrs(data: dict) -> dict:
    m, t, meth, met = (data.get(k) or {} for k in ("model", "task", "method", "metrics"))
    attrs = {"model": m.get("name"), "revision": m.get("revision"), "task": t.get("name"), "method": meth.get("name"),
             "metric": met.get("metric"), "faithfulness": met.get("faithfulness"), "n_edges": met.get("n_edges"),
             "n_layers": m.get("n_layers"), "n_heads": m.get("n_heads"), "n_kv_heads": m.get("n_kv_heads"),
             "schema_version": data.get("schema_version")}
    return {k: v for k, v in attrs.items() if v is not None}


def to_node_link(data: dict, all_edges: bool = False) -> dict:
    recs = labels(data)
    edges = [e for e in data.get("edges") or [] if all_edges or e.get("in_circuit")]
    ends = {x for e in edges for x in (e["source"], e["target"])}
    nodes = []
    for n in data.get("nodes") or []:
        if not (all_edges or n.get("in_circuit") or n["id"] in ends):
            continue
        node = {"id": n["id"], "kind": n.get("kind"), "layer": -1 if n.get("layer") is None else n["layer"],
                "head": -1 if n.get("head") is None else n["head"], "in_circuit": bool(n.get("in_circuit"))}
        if n.get("score") is not None:
            node["score"] = float(n["score"])
        rec = recs.get(n["id"])
        if rec:
            node.update({"label": rec.get("label") or "", "description": rec.get("description") or "",
                         "role_tags": ",".join(rec.get("role_tags") or []), "label_status": rec.get("status") or "",
                         "label_confidence": float(rec.get("confidence") or 0.0)})
        nodes.append(node)
    out_edges = []
    for e in edges:
        edge = {"source": e["source"], "target": e["target"], "key": e.get("slot"), "name": e["name"],
                "in_circuit": bool(e.get("in_circuit"))}
        if e.get("src_pos") is not None:  # position-aware: one edge per slot and position pair
            edge["key"] = f"{e.get('slot')}[{e['src_pos']}->{e['dst_pos']}]"
            edge.update(src_pos=int(e["src_pos"]), dst_pos=int(e["dst_pos"]))
        if e.get("score") is not None:
            edge["score"] = float(e["score"])
        out_edges.append(edge)
    return {"directed": True, "multigraph": True, "graph": _scalar_graph_attrs(data), "nodes": nodes,
            "edges": out_edges}


def to_networkx(data: dict, all_edges: bool = False):
    """The same graph as a networkx MultiDiGraph (networkx's own reader of the node-link document)."""
    import networkx as nx

    return nx.node_link_graph(to_node_link(data, all_edges=all_edges))
