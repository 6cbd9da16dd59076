"""MIB / EAP-IG graph in `Graph.to_pt`'s layout: `torch.save` of a dict with `cfg`, `src_nodes` (the
forward nodes' names, logits excluded), `dst_nodes` (the backward slots' names, `Graph.get_dst_nodes`'s
order), `edges_scores` (float32 [n_forward, n_backward], 0 where there is no edge, all 0 for a
membership-only circuit), `edges_in_graph`
(bool, same shape), `nodes_in_graph` (bool [n_forward]), for node-level circuits `nodes_scores`
(float32 [n_forward], NaN where unscored), for neuron-level ones `neurons_in_graph` (bool
[n_forward, d_model]) and `neurons_scores` (float32, NaN where unscored). Indices as in `mib.py`.
`Graph.from_pt` reads it with `torch.load` (tensors, lists, a dict of numbers: loadable with
`weights_only=True`)."""

from __future__ import annotations

import io

from . import mib


def to_mib_pt(data: dict, d_model: int | None = None, *, scores: bool = True) -> bytes:
    import torch

    config = mib.cfg(data, d_model)
    shape, layout, score, member = mib.graph_values(data)
    src = mib.sources(shape["n_layers"], shape["n_heads"])
    dst = mib.destinations(shape["n_layers"], shape["n_heads"])
    edge_scores = torch.zeros((len(src), len(dst)), dtype=torch.float32)
    in_graph = torch.zeros((len(src), len(dst)), dtype=torch.bool)
    for name, f, b in layout:
        edge_scores[f, b] = score.get(name, 0.0)
        in_graph[f, b] = bool(member.get(name))
    inside = mib.nodes_in_graph(layout, member)
    if not scores:  # thresholded circuits: membership only (EAP-IG's from_pt still wants the key)
        edge_scores.zero_()
    d = {"cfg": config, "src_nodes": src, "dst_nodes": dst, "edges_scores": edge_scores, "edges_in_graph": in_graph,
         "nodes_in_graph": torch.tensor([n in inside for n in src], dtype=torch.bool)}
    per_neuron = mib.neurons(data, config["d_model"])
    if per_neuron is not None:
        width = config["d_model"]
        empty = ([False] * width, [float("nan")] * width)
        d["neurons_in_graph"] = torch.tensor([per_neuron.get(n, empty)[0] for n in src], dtype=torch.bool)
        if scores:
            d["neurons_scores"] = torch.tensor([per_neuron.get(n, empty)[1] for n in src], dtype=torch.float32)
    if scores:
        nscore = mib.node_scores(data)
        if nscore:
            d["nodes_scores"] = torch.tensor([nscore.get(n, float("nan")) for n in src], dtype=torch.float32)
    buf = io.BytesIO()
    torch.save(d, buf)
    return buf.getvalue()
