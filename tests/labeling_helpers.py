"""Shared pieces of the labeling tests: a circuit file built by hand from a list of edges."""

import numpy as np

from discovery.core.circuit import Circuit, MethodInfo, Metrics, SelectionInfo, TaskInfo, build_edges, build_nodes
from discovery.pipeline.discover import model_info
from discovery.model.example_row import representative_row
from discovery.core.graph import Graph

# The toy induction model's expected circuit (its ground_truth.json) plus an edge through the silent MLP.
INDUCTION_EDGES = ["input->a0.h3<v>", "input->a0.h1<v>", "a0.h3->a1.h0<k>", "input->a1.h0<v>", "a0.h1->a1.h0<v>",
                   "a1.h0->logits", "a0.h3->a1.h1<k>", "a1.h1->logits", "a1.h2->logits", "a1.h3->logits",
                   "input->a0.h0<q>", "a0.h0->m1", "m1->logits"]


def induction_setup(n: int, seed: int):
    """The shipped toy induction model, its built-in task (n rows from seed) and the hand circuit above."""
    from discovery import load_model
    from discovery.task_library import build_task

    model = load_model("toy:induction", device="cpu")
    task = build_task("induction", tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=n, seed=seed)
    return model, task, hand_circuit(model, task, INDUCTION_EDGES)


def hand_circuit(model, task, edges, seed=0) -> Circuit:
    g = Graph.from_adapter(model.adapter)
    keep = np.zeros(g.n_edges, dtype=bool)
    for e in edges:
        keep[g.edge_index[e]] = True
    scores = np.random.default_rng(seed).normal(size=g.n_edges)
    nodes = {n for e in edges for n in (e.split("->")[0], e.split("->")[1].split("<")[0])}
    return Circuit(model=model_info(model),
                   task=TaskInfo(name=task.name, source=task.source, rows=len(task), content_hash=task.content_hash,
                                 example=representative_row(model, task)),  # as discover() records it
                   method=MethodInfo(name="given"), selection=SelectionInfo(kind="given"),
                   nodes=build_nodes(g, nodes), edges=build_edges(g, scores, keep), metrics=Metrics(metric="logit_diff"),
                   code_version="test")
