"""Other shapes of a stored circuit: node-link JSON (networkx-style), the MIB circuit format
(EAP-IG/MIB `Graph.to_json` layout), and the Neuronpedia-style graph from labeling's export."""

from __future__ import annotations

from discovery.errors import UserError

FORMATS = ("json", "node-link", "mib", "neuronpedia")


def node_link(circuit: dict) -> dict:
    """The circuit's own nodes and edges (in_circuit) as node-link JSON; labels joined onto nodes."""
    labels = {r.get("component"): r for r in circuit.get("labels") or []}
    nodes = []
    for n in circuit["nodes"]:
        if not n.get("in_circuit"):
            continue
        node = {k: n.get(k) for k in ("id", "kind", "layer", "head")}
        if n["id"] in labels:
            node["label"] = labels[n["id"]].get("label")
            node["role_tags"] = labels[n["id"]].get("role_tags") or []
        nodes.append(node)
    links = [{"source": e["source"], "target": e["target"], "key": e["slot"], "name": e["name"],
              "score": e.get("score")} for e in circuit["edges"] if e.get("in_circuit")]
    graph = {"model": circuit["model"]["name"], "revision": circuit["model"].get("revision"),
             "task": circuit["task"]["name"], "method": circuit["method"]["name"],
             "metric": circuit["metrics"].get("metric"), "faithfulness": circuit["metrics"].get("faithfulness")}
    return {"directed": True, "multigraph": True, "graph": graph, "nodes": nodes, "links": links}


def mib(circuit: dict) -> dict:
    """Every node's and edge's membership, with scores, keyed by MIB names (`a0.h1->a1.h2<q>`)."""
    m = circuit["model"]
    return {
        "cfg": {"n_layers": m["n_layers"], "n_heads": m["n_heads"], "n_kv_heads": m["n_kv_heads"],
                "parallel_attn_mlp": m["parallel_residual"]},
        "nodes": {n["id"]: bool(n.get("in_circuit")) for n in circuit["nodes"]},
        "edges": {e["name"]: {"score": e.get("score"), "in_graph": bool(e.get("in_circuit"))}
                  for e in circuit["edges"]},
    }


def neuronpedia(circuit_json: str) -> dict:
    """The Neuronpedia / circuit-tracer graph shape, from the labeling package's export."""
    try:
        from labeling.export import to_neuronpedia
        from labeling.schema import LabeledCircuit
    except ImportError:
        raise UserError("format 'neuronpedia' needs the labeling package, which this server does not have; "
                        "use format json, node-link or mib") from None
    import json

    from discovery.circuit import Circuit

    data = json.loads(circuit_json)
    model = LabeledCircuit if "labels" in data else Circuit
    return to_neuronpedia(model.model_validate(data))
