"""Circuit diffs: against set arithmetic on hand-made circuits, and through the CLI."""

import json

import numpy as np
import pytest

import tiny
from discovery import Graph, wrap_model
from discovery.core.circuit import Circuit, MethodInfo, Metrics, ModelInfo, SelectionInfo, TaskInfo, build_edges, build_nodes
from discovery.cli import main
from discovery.io.diff import diff_circuits
from discovery.pipeline.discover import model_info
from discovery.pipeline.selection import nodes_in_circuit


class WithLabels(Circuit):  # stands in for labeling's LabeledCircuit: only `labels` matters to the diff
    labels: list[dict] = []


@pytest.fixture(scope="module")
def graph_and_info():
    lm = wrap_model(tiny.build("gpt2", n_layers=2))
    return Graph.from_adapter(lm.adapter), model_info(lm)


def make(graph, info, keep, scores, faithfulness, labels=(), task_hash="h"):
    return WithLabels(
        model=info, task=TaskInfo(name="t", source="t.jsonl", rows=4, content_hash=task_hash),
        method=MethodInfo(name="eap"), selection=SelectionInfo(kind="given"),
        nodes=build_nodes(graph, nodes_in_circuit(graph, keep)), edges=build_edges(graph, scores, keep),
        metrics=Metrics(metric="logit_diff", faithfulness=faithfulness), code_version="test", labels=list(labels))


def test_diff_matches_set_arithmetic(graph_and_info):
    graph, info = graph_and_info
    rng = np.random.default_rng(0)
    keep_a, keep_b = rng.random(graph.n_edges) < 0.2, rng.random(graph.n_edges) < 0.3
    scores_a, scores_b = rng.normal(size=graph.n_edges), rng.normal(size=graph.n_edges)
    a = make(graph, info, keep_a, scores_a, 0.8, labels=[
        {"component": "a0.h1", "label": "previous-token head", "role_tags": ["previous_token"]},
        {"component": "a1.h0", "label": "induction head", "role_tags": ["induction"]},
        {"component": "a1.h2", "label": "unclear", "role_tags": ["other"]}])
    b = make(graph, info, keep_b, scores_b, 0.9, labels=[
        {"component": "a0.h1", "label": "previous-token head", "role_tags": ["previous_token"]},
        {"component": "a1.h0", "label": "induction head", "role_tags": ["induction", "name_mover"]}])
    d = diff_circuits(a, b, top=None)
    names = np.array(graph.edge_names)
    assert [e.name for e in d.edges_gained] == sorted(names[keep_b & ~keep_a])
    assert [e.name for e in d.edges_lost] == sorted(names[keep_a & ~keep_b])
    assert d.edges_kept == int((keep_a & keep_b).sum())
    assert d.jaccard == pytest.approx((keep_a & keep_b).sum() / (keep_a | keep_b).sum())
    assert len(d.score_changes) == int((keep_a | keep_b).sum())
    deltas = [abs(c.delta) for c in d.score_changes]
    assert deltas == sorted(deltas, reverse=True)
    i = graph.edge_index[d.score_changes[0].name]
    assert d.score_changes[0].delta == pytest.approx(scores_b[i] - scores_a[i])
    na, nb = nodes_in_circuit(graph, keep_a), nodes_in_circuit(graph, keep_b)
    assert d.nodes_gained == sorted(nb - na) and d.nodes_lost == sorted(na - nb)
    assert [c.component for c in d.label_changes] == ["a1.h0"]  # a1.h2 is labeled in A only: not a change
    assert (d.a.faithfulness, d.b.faithfulness) == (0.8, 0.9) and d.same_task
    assert diff_circuits(a, a).jaccard == 1.0 and not diff_circuits(a, a).edges_gained
    assert len(diff_circuits(a, b, top=3).score_changes) == 3


def test_empty_circuits_and_other_tasks(graph_and_info):
    graph, info = graph_and_info
    none = np.zeros(graph.n_edges, bool)
    a = make(graph, info, none, np.zeros(graph.n_edges), None)
    b = make(graph, info, none, np.zeros(graph.n_edges), None, task_hash="other")
    d = diff_circuits(a, b)
    assert d.jaccard == 1.0 and d.edges_kept == 0 and not d.same_task


def test_cli_diff(graph_and_info, tmp_path, capsys):
    graph, info = graph_and_info
    keep_a = np.zeros(graph.n_edges, bool)
    keep_a[:5] = True
    keep_b = np.zeros(graph.n_edges, bool)
    keep_b[3:9] = True
    for name, keep in (("a", keep_a), ("b", keep_b)):
        Circuit.model_validate(make(graph, info, keep, np.arange(graph.n_edges) * 0.1, 0.5).model_dump()).save(
            tmp_path / f"{name}.json")
    assert main(["diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["edges_kept"] == 2 and len(d["edges_gained"]) == 4 and len(d["edges_lost"]) == 3
    assert main(["diff", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("A 5 edges") and "Jaccard 0.222" in out
    assert main(["diff", str(tmp_path / "a.json"), str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err
