"""Export a labeled circuit in the graph shape of Neuronpedia / circuit-tracer attribution graphs:
`metadata`, `qParams`, `nodes[]` (with `clerp` = the label) and `links[]` (source, target, weight), so a
circuit opens in tools people already use. circuitry's nodes are whole components (a head, an MLP),
not per-position features: every node has ctx_idx 0 and `feature` is its index in the graph."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from discovery.circuit import Circuit

from .schema import LabeledCircuit

FEATURE_TYPES = {"input": "embedding", "logits": "logit", "attention": "attention head", "kv_head": "attention head",
                 "mlp": "mlp"}


def _layer(node, n_layers: int) -> str:
    if node.kind == "input":
        return "E"
    if node.kind == "logits":
        return str(n_layers)
    return str(node.layer)


def to_neuronpedia(circuit: Circuit | LabeledCircuit, slug: str | None = None) -> dict:
    labels = {r.component: r for r in getattr(circuit, "labels", [])}
    n_layers = circuit.model.n_layers
    kept = [n for n in circuit.nodes if n.in_circuit]
    index = {n.id: i for i, n in enumerate(circuit.nodes)}
    strength: dict[str, float] = {}
    for e in circuit.edges:
        if e.in_circuit and e.score is not None:
            for end in (e.source, e.target):
                strength[end] = strength.get(end, 0.0) + abs(e.score)
    nodes = []
    for n in kept:
        rec = labels.get(n.id)
        clerp = rec.label if rec is not None else {"input": "token embeddings", "logits": "output logits"}.get(n.id, "")
        nodes.append({
            "node_id": n.id, "jsNodeId": n.id, "feature": index[n.id], "layer": _layer(n, n_layers), "ctx_idx": 0,
            "feature_type": FEATURE_TYPES[n.kind], "is_target_logit": n.kind == "logits", "token_prob": 0.0,
            "clerp": clerp, "influence": strength.get(n.id, 0.0), "activation": None,
            "circuitry": ({"description": rec.description, "role_tags": list(rec.role_tags), "status": rec.status,
                           "confidence": rec.confidence} if rec is not None else None),
        })
    links = [{"source": e.source, "target": e.target, "weight": e.score if e.score is not None else 0.0,
              "slot": e.slot, "name": e.name} for e in circuit.edges if e.in_circuit]
    name = slug or re.sub(r"[^a-z0-9]+", "-", f"{circuit.model.name}-{circuit.task.name}-{circuit.method.name}".lower()).strip("-")
    return {
        "metadata": {"slug": name, "scan": circuit.model.name, "prompt_tokens": [], "prompt": circuit.task.source,
                     "node_threshold": None, "schema_version": 1,
                     "info": {"creator_name": "circuitry", "source": "circuitry circuit file",
                              "circuit_schema_version": circuit.schema_version, "method": circuit.method.name,
                              "task": circuit.task.name, "faithfulness": circuit.metrics.faithfulness}},
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def save_neuronpedia(circuit: Circuit | LabeledCircuit, path: str | os.PathLike, slug: str | None = None) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(to_neuronpedia(circuit, slug), indent=1))
