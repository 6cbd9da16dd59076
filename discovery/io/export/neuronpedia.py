"""The attribution-graph JSON of Neuronpedia and circuit-tracer, for a component circuit.

Valid against Neuronpedia's published schema (`apps/webapp/app/api/graph/graph-schema.json`) and
circuit-tracer's pydantic model (`circuit_tracer/frontend/graph_models.py`), and shaped the way their
frontends read it:
- `metadata`: `slug`, `scan` (the model id Neuronpedia files the graph under: `--scan`, default the
  model name's last path part, lower-cased), `transcoder_list` [], `prompt_tokens` and `prompt` (the
  circuit's representative row, `task.example`), `node_threshold` 1.0 (a number: every node is shown;
  lower it in the frontend to hide the least influential), `schema_version` 1, `info` (creator,
  generator, description), `pruning_settings`, and `circuitry` (method, task, metric, faithfulness).
- `nodes[]`, one per in-circuit component. `node_id` / `jsNodeId`: the circuitry id. `layer`: the
  block index as a string (`"E"` for the input, `str(n_layers)` for the logits). `feature`: unique
  within the node's layer (head index H; n_heads + G for key/value head G; n_heads + n_kv_heads for
  the MLP; the answer's token id for the logits; 0 for the input), so the frontends' `layer_feature_ctx` ids are distinct.
  `ctx_idx`: the last prompt position, where the answer is read (components are not per position).
  A position-aware circuit (`--positions`) has a node per component and position instead,
  `node_id` `a1.h3@5`, at `ctx_idx` 5 (an edge's source at its `src_pos`, its target at `dst_pos`):
  the per-token layout these frontends are built for.
  `feature_type`: `embedding`, `attention head`, `mlp`, `logit`. `clerp`: the component's label in a
  labeled circuit, else its id; the logit node's is `Output "<answer>" (p=0.123)` with the answer's
  probability on the representative row (the form both frontends parse the token and `p` from), and its
  `token_prob` is that probability. `influence`: cumulative share of total |link weight| over nodes
  ordered by decreasing weight, as circuit-tracer defines it (the first node's is its own share, the
  last's 1.0). `activation`: null. Labeled nodes also carry `circuitry` (description, tags, status).
- `links[]`, one per (source, target) pair of in-circuit edges: the reader slots of a head (q, k, v)
  are summed into one link, because the frontends key links by their two ends. `weight`: -score for
  metrics where higher is better (logit/probability differences), +score for KL: positive weight =
  the edge carries the behaviour. `scores` keeps each slot's raw circuitry score.
- `qParams.pinnedIds`: the circuit's nodes (the PINNED most influential when there are more), so
  circuit-tracer's frontend draws the circuit's links and its subgraph panel on load (it draws links
  only between pinned nodes, or of the clicked one: a graph with nothing pinned shows bare nodes).

What circuit-tracer's local frontend (`frontend/assets/attribution_graph/util-cg.js`, `formatData`)
needs to draw every node, checked without a browser by `frontend_problems` (and in Chromium by
tests/test_neuronpedia_frontend.py): `influence` at most `node_threshold` (it hides the rest),
`{layer}_{feature}_{ctx_idx}` unique (it merges equal ids and drops ids on more than 2/3 of the
tokens), links between listed nodes only, the logit node's clerp `Output "<token>" (p=<prob>)`, and
every link's ends pinned.
"""

from __future__ import annotations

import re
from datetime import datetime

from ...core.errors import UserError
from .common import labels, loss_sign, model_shape

PINNED = 300  # nodes pinned on load at most (the frontend lays the pinned subgraph out with dagre)

FEATURE_TYPES = {"input": "embedding", "logits": "logit", "attention": "attention head", "kv_head": "attention head",
                 "mlp": "mlp"}


def default_scan(data: dict) -> str:
    name = str((data.get("model") or {}).get("name") or "model").rstrip("/").split("/")[-1]
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "model"


def _feature(node: dict, n_heads: int, n_kv: int, example: dict) -> int:
    kind = node.get("kind")
    if kind == "attention":
        return int(node["head"])
    if kind == "kv_head":
        return n_heads + int(node["head"])
    if kind == "mlp":
        return n_heads + n_kv
    if kind == "logits":
        return int(example["answer_id"])
    return 0


def _layer(node: dict, n_layers: int) -> str:
    if node.get("kind") == "input":
        return "E"
    if node.get("kind") == "logits":
        return str(n_layers)
    return str(node["layer"])


def to_neuronpedia(data: dict, scan: str | None = None, slug: str | None = None) -> dict:
    example = (data.get("task") or {}).get("example")
    if not example or not example.get("tokens"):
        raise UserError("the circuit file has no representative row (task.example: written by `circuitry discover` "
                        "since exports were added); re-run discover on this model and task to export it to Neuronpedia")
    n_layers, n_heads, n_kv, _ = model_shape(data)
    tokens = [str(t) for t in example["tokens"]]
    last = len(tokens) - 1
    positional = bool(data.get("positions"))
    if positional and int(data["positions"]["n"]) != len(tokens):
        raise UserError(f"the circuit's positions ({data['positions']['n']}) and its representative row "
                        f"({len(tokens)} tokens) differ; the file is inconsistent")
    recs = labels(data)
    flip = loss_sign(data)  # weight = contribution to the behaviour: -score for logit_diff, +score for kl
    by_id = {n["id"]: n for n in data.get("nodes") or []}

    def end(node_id: str, pos) -> tuple[str, str, int]:
        """(graph node id, component id, position): a position-aware circuit has a node per position."""
        return (f"{node_id}@{pos}", node_id, int(pos)) if positional else (node_id, node_id, last)

    links: dict[tuple[str, str], dict] = {}
    ends: dict[str, tuple[str, int]] = {}
    for e in data.get("edges") or []:
        if not e.get("in_circuit"):
            continue
        (src, src_comp, src_pos), (dst, dst_comp, dst_pos) = end(e["source"], e.get("src_pos")), \
            end(e["target"], e.get("dst_pos"))
        ends[src], ends[dst] = (src_comp, src_pos), (dst_comp, dst_pos)
        link = links.setdefault((src, dst), {"source": src, "target": dst, "weight": 0.0, "scores": {}})
        if e.get("score") is not None:
            link["weight"] += flip * float(e["score"])
        link["scores"][e.get("slot") or e["name"]] = e.get("score")
    if not positional:  # in-circuit nodes without in-circuit edges (hand-made files) are shown too
        for n in data.get("nodes") or []:
            if n.get("in_circuit"):
                ends.setdefault(n["id"], (n["id"], last))
    missing = sorted({comp for comp, _ in ends.values()} - set(by_id))
    if missing:
        raise UserError(f"in-circuit edges end at {missing[:3]}, which the circuit file's nodes do not list")
    kept = [(nid, by_id[comp], pos) for nid, (comp, pos) in ends.items()]

    strength = {nid: 0.0 for nid, _, _ in kept}
    for (s, t), link in links.items():
        strength[s] += abs(link["weight"])
        strength[t] += abs(link["weight"])
    total = sum(strength.values())
    influence, running = {}, 0.0
    for nid in sorted(strength, key=lambda k: -strength[k]):
        running += strength[nid]
        influence[nid] = min(1.0, running / total) if total > 0 else 1.0

    nodes = []
    order = {n["id"]: i for i, n in enumerate(data.get("nodes") or [])}
    for nid, n, pos in sorted(kept, key=lambda k: (order[k[1]["id"]], k[2])):
        rec = recs.get(n["id"])
        node = {"node_id": nid, "jsNodeId": nid, "feature": _feature(n, n_heads, n_kv, example),
                "layer": _layer(n, n_layers), "ctx_idx": pos, "feature_type": FEATURE_TYPES[n["kind"]],
                "is_target_logit": n["kind"] == "logits", "token_prob": 0.0, "run_idx": 0, "reverse_ctx_idx": 0,
                "clerp": rec["label"] if rec and rec.get("label") else n["id"],
                "influence": influence[nid], "activation": None}
        if n["kind"] == "logits":
            p = float(example.get("answer_prob") or 0.0)
            node["token_prob"] = p
            node["clerp"] = f'Output "{example.get("answer", "")}" (p={p:.3f})'
        if rec:
            node["circuitry"] = {"component": n["id"], "description": rec.get("description"),
                                 "role_tags": list(rec.get("role_tags") or []), "status": rec.get("status"),
                                 "confidence": rec.get("confidence")}
        nodes.append(node)

    model, task, method = data.get("model") or {}, data.get("task") or {}, data.get("method") or {}
    metrics = data.get("metrics") or {}
    name = slug or re.sub(r"[^a-z0-9]+", "-", f"{default_scan(data)}-{task.get('name', '')}-"
                                                 f"{method.get('name', '')}".lower()).strip("-")
    created = data.get("created_at")
    info = {"creator_name": "circuitry",
            "description": f"{method.get('name')} circuit of {model.get('name')} on task {task.get('name')} "
                           f"({metrics.get('n_edges')} edges, faithfulness {metrics.get('faithfulness')}); "
                           "nodes are whole heads and MLPs, links carry edge scores",
            "generator": {"name": "circuitry", "version": str(data.get("code_version") or "")}}
    try:
        info["create_time_ms"] = int(datetime.fromisoformat(created).timestamp() * 1000)
    except (TypeError, ValueError):
        pass
    return {
        "metadata": {
            "slug": name, "scan": scan or default_scan(data), "transcoder_list": [], "prompt_tokens": tokens,
            "prompt": str(example.get("prompt") or "".join(tokens)), "node_threshold": 1.0, "schema_version": 1,
            "info": info, "pruning_settings": {"node_threshold": 1.0, "edge_threshold": 1.0},
            "circuitry": {"model": model.get("name"), "revision": model.get("revision"), "task": task.get("name"),
                          "task_source": task.get("source"), "method": method.get("name"),
                          "metric": metrics.get("metric"), "faithfulness": metrics.get("faithfulness"),
                          "schema_version": data.get("schema_version"), "example_row": example.get("row", 0)},
        },
        "qParams": {"pinnedIds": [n["node_id"] for n in sorted(nodes, key=lambda n: n["influence"])[:PINNED]],
                    "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": list(links.values()),
    }


def write_graph_dir(graph: dict, directory) -> "Path":
    """Write `graph` as a circuit-tracer frontend data folder: `DIR/<slug>.json` plus its entry in
    `DIR/graph-metadata.json` (`{"graphs": [{slug, scan, prompt_tokens, prompt, title_prefix}]}`, the
    index the frontend lists; an entry with the same slug is replaced). circuit-tracer's
    `frontend.local_server.serve(data_dir=DIR)` then shows it."""
    import json
    from pathlib import Path

    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    meta = graph["metadata"]
    path = folder / f"{meta['slug']}.json"
    path.write_text(json.dumps(graph, indent=1))
    index_path = folder / "graph-metadata.json"
    try:
        index = json.loads(index_path.read_text()) if index_path.exists() else {"graphs": []}
        graphs = [g for g in index.get("graphs", []) if isinstance(g, dict) and g.get("slug") != meta["slug"]]
    except (ValueError, AttributeError):
        raise UserError(f"{index_path} is not a graph index ({{\"graphs\": [...]}}); give another folder") from None
    graphs.append({"slug": meta["slug"], "scan": meta["scan"], "transcoder_list": meta["transcoder_list"],
                   "prompt_tokens": meta["prompt_tokens"], "prompt": meta["prompt"],
                   "node_threshold": meta["node_threshold"], "schema_version": meta["schema_version"],
                   "title_prefix": ""})
    index_path.write_text(json.dumps({"graphs": graphs}, indent=1))
    return path


def frontend_problems(graph: dict) -> list[str]:
    """Why circuit-tracer's frontend would not draw all of `graph` (empty: it draws every node, and every
    link once the page loads); its formatData rules, in the module docstring."""
    problems, meta = [], graph["metadata"]
    nodes, links = graph["nodes"], graph["links"]
    ids = {n["node_id"] for n in nodes}
    threshold = meta.get("node_threshold")
    if not isinstance(threshold, (int, float)):
        problems.append("metadata.node_threshold is not a number")
    else:
        hidden = [n["node_id"] for n in nodes if n["feature_type"] not in ("embedding", "logit")
                  and not (n.get("influence") is not None and n["influence"] <= threshold)]
        if hidden:
            problems.append(f"influence above node_threshold {threshold} (hidden): {hidden[:3]}")
    keys: dict[str, int] = {}
    for n in nodes:
        key = f"{n['layer']}_{n['feature']}_{n['ctx_idx']}"
        keys[key] = keys.get(key, 0) + 1
    merged = [k for k, c in keys.items() if c > 1]
    if merged:
        problems.append(f"nodes share a layer_feature_ctx id (merged or dropped): {merged[:3]}")
    if any(c > len(meta["prompt_tokens"]) * 2 / 3 for c in keys.values()):
        problems.append("a layer_feature_ctx id is on more than 2/3 of the tokens (dropped as too common)")
    dangling = [(k["source"], k["target"]) for k in links if k["source"] not in ids or k["target"] not in ids]
    if dangling:
        problems.append(f"links to unlisted nodes: {dangling[:3]}")
    for n in nodes:
        if n["feature_type"] == "logit" and not re.fullmatch(r'Output "[^"]*" \(p=[0-9.e-]+\)', n.get("clerp", "")):
            problems.append(f"logit node {n['node_id']}: clerp {n.get('clerp')!r} is not 'Output \"<token>\" (p=<prob>)'")
    pinned = set(graph.get("qParams", {}).get("pinnedIds") or [])
    unpinned = [(k["source"], k["target"]) for k in links if not {k["source"], k["target"]} <= pinned]
    if unpinned and len(ids) <= PINNED:
        problems.append(f"links not drawn on load (an end not pinned): {unpinned[:3]}")
    return problems
