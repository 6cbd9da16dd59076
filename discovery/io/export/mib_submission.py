"""MIB's circuit-localization submission layout (the MIB circuit track's README and its evaluation
code): one folder per task and model, named `{task}_{model}` (e.g. `ioi_gpt2`,
`arithmetic-addition_llama3`), holding either
- one importance-score file, `importances.json` (or `.pt`): every edge with its score, from which MIB
  builds its own circuits at each edge percentage; or
- nine thresholded circuits (`--circuits`), one per edge percentage p in 0.1, 0.2, 0.5, 1, 2, 5, 10,
  20, 50: at most floor(p/100 · total edges) edges, the top ones by |score| then pruned (edges with no
  path from the input to the logits dropped, as MIB's `apply_topn` does), in `circuit_{p}.json` (or
  `.pt`), scores included (MIB's loader reads only the membership; EAP-IG's `Graph.from_json` needs
  the scores). MIB reads every .json / .pt of the folder, so nothing else is put
  there.
MIB evaluates only its own models and tasks, so both names and the model's shape are checked: the
circuit's EAP-IG graph must have exactly as many edges as MIB's graph of that model (gpt2: 32,491)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...core.errors import UserError
from . import mib
from .common import model_shape

MIB_MODELS = {"gpt2": (12, 12), "qwen2.5": (24, 14), "gemma2": (26, 8), "llama3": (32, 32)}  # layers, heads
MIB_EDGE_COUNTS = {"gpt2": 32491, "qwen2.5": 179749, "gemma2": 74218, "llama3": 1592881}
MIB_PAIRS = {"ioi": ("gpt2", "qwen2.5", "gemma2", "llama3"), "mcqa": ("qwen2.5", "gemma2", "llama3"),
             "arithmetic-addition": ("llama3",), "arithmetic-subtraction": ("llama3",),
             "arc-easy": ("gemma2", "llama3"), "arc-challenge": ("llama3",)}
PERCENTAGES = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50)


def check_names(task: str, model: str) -> None:
    if task.replace("_", "-") not in MIB_PAIRS:
        raise UserError(f"'{task}' is not a MIB circuit-track task; use one of {', '.join(MIB_PAIRS)}")
    if model not in MIB_MODELS:
        raise UserError(f"'{model}' is not a MIB circuit-track model; use one of {', '.join(MIB_MODELS)}")
    if model not in MIB_PAIRS[task.replace("_", "-")]:
        raise UserError(f"MIB does not evaluate task {task} on {model}; it does on "
                        f"{', '.join(MIB_PAIRS[task.replace('_', '-')])}")


def _circuit_at(data: dict, score: dict[str, float], n: int) -> dict:
    """`data` with only its top-n edges by |MIB score| in the circuit, then pruned (per-head names)."""
    from ...core.graph import Graph
    from ...pipeline.selection import nodes_in_circuit, prune

    n_layers, n_heads, _, parallel = model_shape(data)
    graph = Graph(n_layers, n_heads, None, parallel)  # ungrouped: its edge names are exactly MIB's
    values = np.array([abs(score.get(name, 0.0)) for name in graph.edge_names])
    keep = np.zeros(graph.n_edges, dtype=bool)
    keep[np.argsort(-values, kind="stable")[:n]] = True
    keep = prune(graph, keep)
    inside = nodes_in_circuit(graph, keep)
    model = dict(data["model"], n_kv_heads=n_heads)
    return dict(data, model=model, edges=[{"name": name, "score": -score.get(name, 0.0), "in_circuit": bool(k)}
                                          for name, k in zip(graph.edge_names, keep)],
                nodes=[{"id": nid, "in_circuit": nid in inside} for nid in graph.node_ids()])


def write_submission(data: dict, out_dir: str, task: str, model: str, *, circuits: bool = False, pt: bool = False,
                     d_model: int | None = None) -> list[Path]:
    check_names(task, model)
    n_layers, n_heads, _, parallel = model_shape(data)
    total = len(mib.edges(n_layers, n_heads, parallel))
    if total != MIB_EDGE_COUNTS[model]:
        want = MIB_MODELS[model]
        raise UserError(f"the circuit's model ({n_layers} layers, {n_heads} heads: {total} EAP-IG edges) is not MIB's "
                        f"{model} ({want[0]} layers, {want[1]} heads: {MIB_EDGE_COUNTS[model]} edges)")
    folder = Path(out_dir) / f"{task.replace('_', '-')}_{model}"
    folder.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in folder.iterdir() if p.suffix in (".json", ".pt"))
    if stale:
        raise UserError(f"{folder} already holds {', '.join(stale[:3])}; MIB reads every .json/.pt file there, "
                        "so give an empty folder")
    ext = ".pt" if pt else ".json"

    def write(doc: dict, name: str) -> Path:
        path = folder / f"{name}{ext}"
        if pt:
            from .mib_pt import to_mib_pt
            path.write_bytes(to_mib_pt(doc, d_model))
        else:
            path.write_text(json.dumps(mib.to_mib(doc, d_model)))
        return path

    if not circuits:
        return [write(data, "importances")]
    score = mib.graph_values(data)[2]
    # scores written too: MIB's loader ignores them, EAP-IG's Graph.from_json requires them
    return [write(dict(_circuit_at(data, score, int(p / 100 * total)), metrics={"metric": "logit_diff"}),
                  f"circuit_{p:g}") for p in PERCENTAGES]
