"""The Python API as a researcher first meets it: built-in tasks by name wherever a task is taken, signed
selection that takes its direction from the metric, a one-line repr, node rankings on edge-level
circuits."""

import json

import numpy as np
import pytest

import tiny
from conftest import token_rows
from discovery import (Circuit, Graph, Setup, UserError, discover, evaluate, load_model, load_task, score_edges,
                       task_from_rows, threshold, top_n, wrap_model)
from discovery.core.errors import TaskError
from discovery.task_library import build_task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    return load_model("toy:induction", device="cpu")


def test_load_task_takes_a_builtin_name(toy):
    by_name = load_task("induction", tokenizer=toy.tokenizer, vocab_size=toy.vocab_size, n=12, seed=3)
    built = build_task("induction", tokenizer=toy.tokenizer, vocab_size=toy.vocab_size, n=12, seed=3)
    assert by_name == built and len(by_name) == 12
    default = load_task("induction", tokenizer=toy.tokenizer, vocab_size=toy.vocab_size)
    assert default.source == "builtin:induction?n=200&seed=0"


def test_load_task_a_file_wins_and_bad_names_say_why(toy, tmp_path, monkeypatch):
    rows = build_task("induction", tokenizer=toy.tokenizer, vocab_size=toy.vocab_size, n=3, seed=0)
    (tmp_path / "induction").write_text("\n".join(json.dumps({"clean_ids": c, "corrupted_ids": k, "answer_id": a,
                                                              "wrong_id": w}) for c, k, a, w in
                                                  zip(rows.clean_ids, rows.corrupted_ids, rows.answer_ids,
                                                      rows.wrong_ids)))
    monkeypatch.chdir(tmp_path)
    from_file = load_task("induction", vocab_size=toy.vocab_size)
    assert len(from_file) == 3 and from_file.source == "induction"  # the file of that name, not the built-in task
    with pytest.raises(TaskError, match="is a file, whose rows are its own"):
        load_task("induction", vocab_size=toy.vocab_size, n=5)
    with pytest.raises(TaskError, match="neither a file nor a built-in task; built-in tasks: ioi"):
        load_task("iio")
    with pytest.raises(TaskError, match="not found"):
        load_task("no/such.jsonl")


def test_discover_evaluate_and_setup_take_a_task_by_name(toy):
    task = build_task("induction", tokenizer=toy.tokenizer, vocab_size=toy.vocab_size, n=200, seed=0)
    by_name = discover(toy, "induction", "eap", top_n=15, curve=False)
    by_task = discover(toy, task, "eap", top_n=15, curve=False)
    assert [e.in_circuit for e in by_name.edges] == [e.in_circuit for e in by_task.edges]
    assert by_name.task.content_hash == task.content_hash
    small = load_task("induction", tokenizer=toy.tokenizer, vocab_size=toy.vocab_size, n=16, seed=1)
    assert evaluate(toy, small, by_name)["faithfulness"] == pytest.approx(
        evaluate(toy, build_task("induction", toy.tokenizer, toy.vocab_size, n=16, seed=1), by_name)["faithfulness"])
    assert len(Setup(toy, "induction", "logit_diff").task) == 200


def test_top_n_takes_the_direction_from_the_setups_metric():
    lm = wrap_model(tiny.build("gpt2", seed=2))
    task = task_from_rows(token_rows(n=4, seed=1), vocab_size=tiny.VOCAB)
    kl = Setup(lm, task, "kl")
    scores = score_edges(kl, "eap").numpy()
    assert (scores > 0).any() and (scores < 0).any()
    g = kl.graph
    k = 10
    # KL is lower-is-better: the signed top are the most positive scores
    want = np.zeros(g.n_edges, bool)
    want[np.argsort(-scores, kind="stable")[:k]] = True
    np.testing.assert_array_equal(top_n(kl, scores, k, absolute=False), want)
    np.testing.assert_array_equal(top_n(g, scores, k, higher_is_better=False, absolute=False), want)
    assert threshold(kl, scores, float(np.sort(scores)[-k]), absolute=False).sum() == k
    with pytest.raises(UserError, match="needs the metric's direction"):
        top_n(g, scores, k, absolute=False)  # a bare graph: no silent "higher is better"
    with pytest.raises(UserError, match="disagrees with the setup's metric 'kl'"):
        top_n(kl, scores, k, higher_is_better=True, absolute=False)
    # |score| selection needs no direction
    np.testing.assert_array_equal(top_n(g, scores, k), top_n(kl, scores, k))


def test_repr_is_one_short_line():
    g = Graph(12, 12)  # a GPT-2-small-shaped file: 32,491 edges (its pydantic repr was 231 KB)
    from discovery.core.circuit import MethodInfo, Metrics, ModelInfo, SelectionInfo, TaskInfo, build_edges, build_nodes
    scores = np.linspace(-1, 1, g.n_edges)
    keep = np.zeros(g.n_edges, bool)
    keep[:40] = True
    c = Circuit(model=ModelInfo(name="gpt2", architecture="GPT2LMHeadModel", model_type="gpt2", config_hash="-",
                                n_layers=12, n_heads=12, n_kv_heads=12, parallel_residual=False, dtype="float32"),
                task=TaskInfo(name="ioi", source="builtin:ioi", rows=200, content_hash="-"),
                method=MethodInfo(name="eap-ig"), selection=SelectionInfo(kind="top-n", value=40),
                nodes=build_nodes(g, {"input", "logits"}), edges=build_edges(g, scores, keep),
                metrics=Metrics(metric="logit_diff", n_edges=40, n_nodes=7, faithfulness=0.9123),
                warnings=["behaviour within noise"], code_version="t")
    text = repr(c)
    assert str(c) == text and "\n" not in text and len(text) < 200, text
    assert text == ("Circuit(gpt2 · ioi (200 rows) · eap-ig, top-n 40: 40 of 32491 edges, 7 nodes, faithfulness "
                    "0.912 (logit_diff); 1 warning)")


def test_top_nodes_of_an_edge_circuit_come_from_its_edges():
    lm = wrap_model(tiny.build("gpt2", seed=5))
    task = task_from_rows(token_rows(n=4, seed=3), vocab_size=tiny.VOCAB)
    edges = discover(lm, task, "eap", top_n=40, curve=False, qk_fix=False)
    nodes = discover(lm, task, "eap", level="node", top_n=4, curve=False, qk_fix=False)
    assert all(n.score is None for n in edges.nodes)
    top = edges.top_nodes(5)
    assert len(top) == 5 and "logits" not in {n.id for n in top}
    # independent: node-level EAP scores each node by switching its whole output (its own backward pass)
    measured = {n.id: n.score for n in nodes.nodes if n.score is not None}
    for n in top:
        assert n.score == pytest.approx(measured[n.id], rel=1e-4, abs=1e-6), n.id
    assert [n.id for n in top] == sorted(measured, key=lambda i: -abs(measured[i]))[:5]
    assert all(n.in_circuit for n in edges.top_nodes(50, in_circuit=True))
