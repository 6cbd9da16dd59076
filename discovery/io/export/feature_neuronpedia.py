"""A feature attribution graph (docs/graph-format.md) as the graph JSON circuit-tracer's
`create_graph_files` writes, which Neuronpedia and circuit-tracer's frontend load.

From the graph file's kept nodes and edges (pruned as circuit-tracer's `prune_graph` prunes):
- `metadata`: `slug`, `scan` (the transcoders' scan, else `--scan`, else the model name's last part),
  `transcoder_list` [], `prompt_tokens` (each token decoded), `prompt`, `node_threshold`,
  `schema_version` 1, plus `info` (generator), `pruning_settings` (node and edge thresholds) and
  `generation_settings` (max_n_logits, desired_logit_prob, batch_size, max_feature_nodes).
- `qParams`: `pinnedIds` [], `supernodes` [], `linkType` "both", `clickedId` "", `sg_pos` "".
- `nodes[]`, circuit-tracer's `Node` fields (`node_id`, `feature`, `layer`, `ctx_idx`, `feature_type`,
  `token_prob`, `is_target_logit`, `run_idx`, `reverse_ctx_idx`, `jsNodeId`, `clerp`, `influence`,
  `activation`), built as its `Node.feature_node` / `error_node` / `token_node` / `logit_node` build them:
    feature  node_id `{layer}_{feature}_{pos}`, feature = Cantor pairing of (layer, feature),
             feature_type "cross layer transcoder", jsNodeId `{layer}_{feature}-0`, activation;
    error    node_id `0_{layer}_{pos}`, feature -1, feature_type "mlp reconstruction error";
    token    node_id `E_{token id}_{pos}`, layer "E", feature = pos, feature_type "embedding";
    logit    node_id `{n_layers + 1}_{token id}_{pos}`, layer n_layers + 1, feature = token id,
             feature_type "logit", token_prob, is_target_logit for the first, clerp `Output "tok" (p=0.123)`.
  `influence` is the node's cumulative influence share (the file's `cumulative`; none for logits).
  Only nodes with a link are listed, and every token and logit node (circuit-tracer's filter).
  circuit-tracer's error ids can coincide with a layer-0 feature's (`0_{layer}_{pos}` vs
  `0_{feature}_{pos}`); the ids are kept as it writes them, and `metadata.info.id_collisions` counts
  such pairs when there are any.
- `links[]`: `source`, `target` (node ids), `weight` (the edge's direct effect).
"""

from __future__ import annotations

import re

from ...core.errors import UserError


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _node(n: dict, n_layers: int, first_logit: bool) -> dict:
    base = {"token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": "",
            "influence": n.get("cumulative"), "activation": None}
    t = n["type"]
    if t == "feature":
        layer, feat, pos = n["layer"], n["feature"], n["pos"]
        return {**base, "node_id": f"{layer}_{feat}_{pos}", "feature": _cantor(layer, feat), "layer": str(layer),
                "ctx_idx": pos, "feature_type": "cross layer transcoder", "jsNodeId": f"{layer}_{feat}-0",
                "activation": n.get("activation")}
    if t == "error":
        layer, pos = n["layer"], n["pos"]
        return {**base, "node_id": f"0_{layer}_{pos}", "feature": -1, "layer": str(layer), "ctx_idx": pos,
                "feature_type": "mlp reconstruction error", "jsNodeId": f"{layer}_{pos}-0"}
    if t == "embedding":
        tok, pos = n["token"], n["pos"]
        return {**base, "node_id": f"E_{tok}_{pos}", "feature": pos, "layer": "E", "ctx_idx": pos,
                "feature_type": "embedding", "jsNodeId": f"E_{tok}-{pos}"}
    if t == "logit":
        tok, pos, p = n["token"], n["pos"], float(n.get("prob") or 0.0)
        layer = str(n_layers + 1)
        return {**base, "node_id": f"{layer}_{tok}_{pos}", "feature": tok, "layer": layer, "ctx_idx": pos,
                "feature_type": "logit", "token_prob": p, "is_target_logit": first_logit,
                "jsNodeId": f"L_{tok}-{pos}", "clerp": f'Output "{n.get("text", "")}" (p={p:.3f})', "influence": None}
    raise UserError(f"graph node {n.get('id')!r} has unknown type {t!r}")


def feature_graph_to_neuronpedia(doc: dict, scan: str | None = None, slug: str | None = None) -> dict:
    model, tcs, settings = doc.get("model") or {}, doc.get("transcoders") or {}, doc.get("settings") or {}
    n_layers = int(model.get("n_layers") or max((n.get("layer", 0) for n in doc["nodes"] if n["type"] != "logit"),
                                               default=0) + 1)
    first = next((i for i, n in enumerate(doc["nodes"]) if n["type"] == "logit"), None)
    nodes = [_node(n, n_layers, i == first) for i, n in enumerate(doc["nodes"])]
    src, dst, w = doc["edges"]["source"], doc["edges"]["target"], doc["edges"]["weight"]
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(x)}
             for s, t, x in zip(src, dst, w)]
    linked = {x for link in links for x in (link["source"], link["target"])}
    used = [n for n in nodes if n["node_id"] in linked or n["feature_type"] in ("embedding", "logit")]
    ids = [n["node_id"] for n in used]
    collisions = len(ids) - len(set(ids))
    name = str(model.get("name") or "model").rstrip("/").split("/")[-1]
    the_scan = scan or tcs.get("scan") or re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "model"
    the_slug = slug or re.sub(r"[^a-z0-9]+", "-", f"{name}-{(doc.get('prompt') or 'prompt')[:40]}".lower()).strip("-")
    info = {"creator_name": "circuitry", "generator": {"name": "circuitry"},
            "description": f"attribution graph of {model.get('name')} over {tcs.get('kind', 'transcoder')} features"}
    if collisions:
        info["id_collisions"] = collisions
    node_threshold = settings.get("node_threshold", 0.8) if settings.get("pruned", True) else 1.0
    edge_threshold = settings.get("edge_threshold", 0.98) if settings.get("pruned", True) else 1.0
    return {
        "metadata": {"slug": the_slug, "scan": str(the_scan), "transcoder_list": [],
                     "prompt_tokens": list(doc.get("token_strings") or [str(t) for t in doc.get("tokens", [])]),
                     "prompt": doc.get("prompt") or "".join(doc.get("token_strings") or []),
                     "node_threshold": float(node_threshold), "schema_version": 1, "info": info,
                     "pruning_settings": {"node_threshold": float(node_threshold),
                                          "edge_threshold": float(edge_threshold)},
                     "generation_settings": {k: v for k, v in (
                         ("max_n_logits", settings.get("max_logits")),
                         ("desired_logit_prob", settings.get("desired_logit_prob")),
                         ("batch_size", settings.get("batch_size")),
                         ("max_feature_nodes", settings.get("max_feature_nodes"))) if v is not None}},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": used,
        "links": links,
    }
