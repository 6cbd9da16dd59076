"""MIB / EAP-IG graph JSON: the layout of the EAP-IG library's `Graph.to_json`, which MIB's circuit
evaluation loads with `Graph.from_json`.

The EAP-IG graph of a model with L layers and H heads:
- forward (source) nodes, in order: `input`, then per layer `a{l}.h0` ... `a{l}.h{H-1}`, `m{l}`
  (forward index of `a{l}.h{h}` = 1 + l(H+1) + h, of `m{l}` = 1 + l(H+1) + H);
- backward (destination) slots, in order: per layer `a{l}.h{h}<q>` for every h, then `<k>`, then `<v>`,
  then `m{l}`; finally `logits` (backward index of `a{l}.h{h}<x>` = l(3H+1) + 'qkv'.index(x)·H + h);
- edges `parent->child` (`input->a0.h1<q>`, `a1.h2->m3`, `m3->logits`) from every node upstream of a
  slot, enumerated as `Graph.from_model` adds them: per layer, every residual-stream node to every head
  of the layer (q, k, v), then (after the layer's heads join the stream, unless `parallel_attn_mlp`)
  every node to the MLP; finally every node to the logits.
Key/value heads always appear per query head: MIB evaluates grouped-query models with
`ungroup_grouped_query_attention`, so a circuit with grouped k/v edges is exported per query head
(see `common.per_head_edges`).

The JSON document: `{"cfg": {n_layers, n_heads, parallel_attn_mlp, d_model}, "nodes": {name:
{"in_graph": bool[, "score": float]}}, "edges": {name: {"score": float, "in_graph": bool}}}`, every node
(`logits` too, always in the graph) and every edge of the graph; a node-level circuit adds node
`score`s, a neuron-level one each node's `neurons` (bool per output dimension) and `neurons_scores`
(NaN where unscored, which JSON writes as the `NaN` token Python's json reads); as `to_json` indexes
a head's row with its layer's slice, a head's entries are its whole layer's, `[n_heads][d_model]`
(`from_json` writes them back the same way). Scores are changes of the loss as MIB
attributes them (`common.loss_sign`: circuitry's logit-difference scores negated); a null score is 0.
"""

from __future__ import annotations

from ...core.errors import UserError
from ...core.nodes import head_id, parse_node
from .common import loss_sign, model_shape, per_head_edges, refuse_positional


def sources(n_layers: int, n_heads: int) -> list[str]:
    out = ["input"]
    for layer in range(n_layers):
        out += [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]
    return out


def destinations(n_layers: int, n_heads: int) -> list[str]:
    out = []
    for layer in range(n_layers):
        for slot in "qkv":
            out += [f"a{layer}.h{h}<{slot}>" for h in range(n_heads)]
        out.append(f"m{layer}")
    return out + ["logits"]


def edges(n_layers: int, n_heads: int, parallel: bool) -> list[tuple[str, int, int]]:
    """(name, forward index, backward index) of every edge, in `Graph.from_model`'s order."""
    fwd = {n: i for i, n in enumerate(sources(n_layers, n_heads))}
    bwd = {n: i for i, n in enumerate(destinations(n_layers, n_heads))}
    out: list[tuple[str, int, int]] = []

    def add(parent: str, child: str) -> None:
        out.append((f"{parent}->{child}", fwd[parent], bwd[child]))

    stream = ["input"]
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        for node in stream:
            for head in heads:
                for slot in "qkv":
                    add(node, f"{head}<{slot}>")
            if parallel:
                add(node, f"m{layer}")
        stream += heads
        if not parallel:
            for node in stream:
                add(node, f"m{layer}")
        stream.append(f"m{layer}")
    for node in stream:
        add(node, "logits")
    return out


def cfg(data: dict, d_model: int | None = None) -> dict:
    n_layers, n_heads, _, parallel = model_shape(data)
    width = d_model or (data.get("model") or {}).get("d_model")
    if not width:
        raise UserError("the circuit file does not record the model's d_model (files written before it was added); "
                        "give it with --d-model N (the model config's hidden_size / n_embd)")
    return {"n_layers": n_layers, "n_heads": n_heads, "parallel_attn_mlp": parallel, "d_model": int(width)}


def graph_values(data: dict) -> tuple[dict, list[tuple[str, int, int]], dict[str, float], dict[str, bool]]:
    """(shape, the graph's edges, MIB score by edge name, in_graph by edge name) of a circuit document.

    Every edge name of the file must be an edge of the EAP-IG graph of its model; edges the file does
    not list are out of the circuit with score 0."""
    refuse_positional(data, "MIB / EAP-IG")
    n_layers, n_heads, _, parallel = model_shape(data)
    layout = edges(n_layers, n_heads, parallel)
    known = {name for name, _, _ in layout}
    sign = loss_sign(data)
    score: dict[str, float] = {}
    member: dict[str, bool] = {}
    for name, value, in_circuit, share in per_head_edges(data):
        if name not in known:
            raise UserError(f"circuit edge '{name}' is not an edge of the EAP-IG graph of a {n_layers}-layer, "
                            f"{n_heads}-head model; the file's edges and its model shape disagree")
        score[name] = score.get(name, 0.0) + (0.0 if value is None else sign * value * share)
        member[name] = member.get(name, False) or in_circuit
    shape = {"n_layers": n_layers, "n_heads": n_heads, "parallel": parallel}
    return shape, layout, score, member


def nodes_in_graph(layout, member: dict[str, bool]) -> set[str]:
    """Nodes that are the parent or the child of an edge in the graph (`logits` always)."""
    inside = {"logits"}
    for name, _, _ in layout:
        if member.get(name):
            parent, child = name.split("->")
            inside.add(parent)
            inside.add(child.split("<")[0])
    return inside


def node_scores(data: dict) -> dict[str, float]:
    """Node scores of a node-level circuit (nodes[].score), for MIB's node entries."""
    sign = loss_sign(data)
    return {n["id"]: sign * float(n["score"]) for n in data.get("nodes") or []
            if isinstance(n, dict) and n.get("score") is not None}


def neurons(data: dict, width: int) -> dict[str, tuple[list[bool], list[float]]] | None:
    """A neuron-level circuit's kept output dimensions per node, as MIB's `neurons` (bool per
    dimension) and `neurons_scores` (loss-signed; NaN, EAP-IG's "unscored", where the circuit file
    records no score: it records scores of kept neurons only). None for edge and node circuits."""
    if data.get("level") != "neuron":
        return None
    sign = loss_sign(data)
    out = {}
    for n in data.get("nodes") or []:
        kept, values = n.get("neurons") or [], n.get("neuron_scores") or []
        mask, nscores = [False] * width, [float("nan")] * width
        for i, v in zip(kept, list(values) + [None] * (len(kept) - len(values))):
            if not 0 <= int(i) < width:
                raise UserError(f"node '{n['id']}' lists neuron {i} but d_model is {width}")
            mask[int(i)] = True
            if v is not None:
                nscores[int(i)] = sign * float(v)
        out[n["id"]] = (mask, nscores)
    return out


def to_mib(data: dict, d_model: int | None = None, *, scores: bool = True) -> dict:
    """The circuit as `Graph.to_json` writes it; `scores=False` leaves the edge scores out (MIB's
    thresholded-circuit submissions carry only membership). Node-level circuits add each scored node's
    `score`; neuron-level circuits each node's `neurons` and `neurons_scores`."""
    config = cfg(data, d_model)
    shape, layout, score, member = graph_values(data)
    inside = nodes_in_graph(layout, member)
    nscore = node_scores(data)
    per_neuron = neurons(data, config["d_model"])
    nodes = {}
    for name in sources(shape["n_layers"], shape["n_heads"]) + ["logits"]:
        nodes[name] = {"in_graph": name in inside}
        if scores and name in nscore and name != "logits":
            nodes[name]["score"] = nscore[name]
        if per_neuron is not None and name != "logits":
            empty = ([False] * config["d_model"], [float("nan")] * config["d_model"])
            if name.startswith("a"):  # to_json indexes a head with its layer's slice: every head of the layer
                layer = parse_node(name).layer
                rows = [per_neuron.get(head_id(layer, h), empty) for h in range(shape["n_heads"])]
                mask, nscores = [r[0] for r in rows], [r[1] for r in rows]
            else:
                mask, nscores = per_neuron.get(name, empty)
            nodes[name]["neurons"] = mask
            if scores:
                nodes[name]["neurons_scores"] = nscores
    out_edges = {}
    for name, _, _ in layout:
        out_edges[name] = {"score": score.get(name, 0.0), "in_graph": bool(member.get(name))} if scores else \
            {"in_graph": bool(member.get(name))}
    return {"cfg": config, "nodes": nodes, "edges": out_edges}
