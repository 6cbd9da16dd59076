"""Faithful defaults at every level (issue 26, item 4): node and neuron levels and position-aware edges
select by the faithfulness target as edges do, ACDC's default tau is a fraction of the behaviour in
its own metric, and an empty or whole-graph result, or a tau above the behaviour, warns.

The faithfulness a node selection claims is recomputed by plain hooks on the Hugging Face model
(tests/node_reference.py: the out-of-circuit nodes' outputs replaced by the corrupted run's), and
ACDC's behaviour as KL(clean || corrupted) from two plain forwards."""

import json
import warnings

import numpy as np
import pytest
import torch

from discovery import discover, evaluate, load_model
from discovery.task_library import build_task
from discovery.cli import main
from discovery.core import circuit as circuit_module
from discovery.pipeline.options import DEFAULT_TARGET, DEFAULT_TAU_FRACTION
from discovery.pipeline.sanity import ResultWarning
from node_reference import patched_logits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lm():
    return load_model("toy:induction", device="cpu")  # trained: it does its task (sanity warns on none)


@pytest.fixture(scope="module")
def task(lm):
    return build_task("induction", lm.tokenizer, lm.vocab_size, n=12, seed=1000)


@pytest.fixture(scope="module")
def model(lm):
    return lm.hf_model


def _tensors(task, rows=None):
    rows = range(len(task)) if rows is None else rows
    assert all(len(task.answer_ids[r]) == len(task.wrong_ids[r]) == 1 for r in rows)
    pad = lambda ids: torch.nn.utils.rnn.pad_sequence([torch.tensor(ids[r]) for r in rows], batch_first=True)  # noqa
    last = torch.tensor([len(task.clean_ids[r]) - 1 for r in rows])
    assert [len(task.clean_ids[r]) for r in rows] == [len(task.corrupted_ids[r]) for r in rows]
    ans = torch.tensor([task.answer_ids[r][0] for r in rows])
    wrong = torch.tensor([task.wrong_ids[r][0] for r in rows])
    return pad(task.clean_ids), pad(task.corrupted_ids), last, ans, wrong


def _logit_diff(logits, last, ans, wrong):
    i = torch.arange(len(ans))
    at = logits[i, last].double()  # right padding: a causal model's logits up to `last` ignore it
    return float((at[i, ans] - at[i, wrong]).mean())


def _reference_faithfulness(model, task, sources, kept):
    """f = (m(C) - m(empty)) / (m(full) - m(empty)) with every node outside `kept` corrupted."""
    clean, corrupted, last, ans, wrong = _tensors(task)
    with torch.no_grad():
        full = _logit_diff(model(clean).logits, last, ans, wrong)
    empty = _logit_diff(patched_logits(model, clean, corrupted, list(sources)), last, ans, wrong)
    circ = _logit_diff(patched_logits(model, clean, corrupted, [s for s in sources if s not in kept]), last, ans,
                       wrong)
    return (circ - empty) / (full - empty)


def _meets(f):
    return abs(1 - f) <= 1 - DEFAULT_TARGET + 1e-9


def test_node_level_default_is_the_fewest_nodes_meeting_the_target(lm, model, task):
    c = discover(lm, task, "exact", level="node", curve=False)
    assert c.selection.kind == "faithfulness" and c.selection.value == DEFAULT_TARGET  # was: the top 10%
    scored = [n for n in c.nodes if n.score is not None]  # every source node (input, heads, MLPs)
    kept = [n.id for n in scored if n.in_circuit]
    f = _reference_faithfulness(model, task, [n.id for n in scored], kept)
    assert f == pytest.approx(c.metrics.faithfulness, abs=1e-4) and _meets(f)
    assert c.method.params["search"]["n_units"] == len(kept)
    # one node fewer (the kept ones but the lowest |score|) misses the target, by the same reference
    ranked = sorted(scored, key=lambda n: -abs(n.score))
    assert [n.id for n in ranked[:len(kept)]] == kept or set(n.id for n in ranked[:len(kept)]) == set(kept)
    if len(kept) > 1:
        assert not _meets(_reference_faithfulness(model, task, [n.id for n in scored],
                                                  [n.id for n in ranked[:len(kept) - 1]]))
    # an explicit target and top_n still work at node level
    loose = discover(lm, task, "exact", level="node", target=0.5, curve=False)
    assert loose.selection.kind == "faithfulness" and loose.selection.value == 0.5
    assert sum(n.in_circuit for n in loose.nodes if n.score is not None) <= len(kept)
    top = discover(lm, task, "exact", level="node", top_n=2, curve=False)
    assert top.selection.kind == "top-n" and sum(n.in_circuit for n in top.nodes if n.score is not None) == 2


def test_neuron_level_default_meets_the_target_on_reevaluation(lm, task):
    c = discover(lm, task, "eap-ig", level="neuron", curve=False)
    assert c.selection.kind == "faithfulness"
    again = evaluate(lm, task, c)  # the neuron mask read back from the circuit, evaluated afresh
    assert again["faithfulness"] == pytest.approx(c.metrics.faithfulness, abs=1e-4) and _meets(again["faithfulness"])
    search = c.method.params["search"]
    assert search["met"] and search["n_units"] == c.metrics.n_neurons


def test_positions_default_selects_by_the_target_and_counts_the_graphs_edges(lm, tmp_path, capsys, monkeypatch):
    big = build_task("induction", lm.tokenizer, lm.vocab_size, n=40, seed=1000)
    lengths = [len(ids) for ids in big.clean_ids]
    common = max(set(lengths), key=lengths.count)
    task = big.subset([r for r, n in enumerate(lengths) if n == common][:6])  # one token layout
    c = discover(lm, task, "eap", positions=True, curve=False)
    assert c.selection.kind == "faithfulness"  # was: the top 100 edges
    again = evaluate(lm, task, c)
    assert again["circuit"] == pytest.approx(c.metrics.circuit, abs=1e-5) and _meets(again["faithfulness"])

    # the summary line counts the graph's edges, not the file's listing cap
    monkeypatch.setattr(circuit_module, "POSITIONAL_EDGES_LISTED", 100)
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"clean_ids": task.clean_ids[r], "corrupted_ids": task.corrupted_ids[r],
                                        "answer_id": task.answer_ids[r][0], "wrong_id": task.wrong_ids[r][0]}) + "\n"
                            for r in range(len(task))))
    code = main(["discover", "--model", "toy:induction", "--task", str(path), "--method", "eap", "--positions",
                 "--top-n", "10", "--no-curve", "--quiet", "--out", str(tmp_path / "c.json")])
    out = capsys.readouterr().out
    assert code == 0 and f" of {c.positions.n_edges} edges" in out and c.positions.n_edges > 100


def _kl_behaviour(model, task):
    clean, corrupted, last, _, _ = _tensors(task)
    i = torch.arange(len(last))
    with torch.no_grad():
        p = torch.log_softmax(model(clean).logits[i, last].double(), -1)
        q = torch.log_softmax(model(corrupted).logits[i, last].double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.parametrize("method", ["acdc", "eap-ig+acdc"])
def test_acdc_default_tau_is_a_fraction_of_the_behaviour(lm, model, task, method):
    kl = _kl_behaviour(model, task)
    c = discover(lm, task, method, curve=False)
    p = c.method.params
    assert p["metric"] == "kl" and p["behaviour"] == pytest.approx(kl, rel=1e-4)
    assert p["tau"] == pytest.approx(DEFAULT_TAU_FRACTION * kl, rel=1e-4) and c.selection.value == p["tau"]
    assert p["tau_fraction"] == DEFAULT_TAU_FRACTION
    assert not any("tau above" in w for w in c.warnings)


def test_a_tau_above_the_behaviour_and_an_empty_circuit_warn(lm, model, task):
    kl = _kl_behaviour(model, task)
    with pytest.warns(ResultWarning, match="tau above the behaviour"):
        c = discover(lm, task, "acdc", tau=2 * kl, curve=False)
    assert any(w.startswith("tau above the behaviour") for w in c.warnings)
    if c.metrics.n_edges == 0:
        assert any(w.startswith("empty circuit") for w in c.warnings)
    with pytest.warns(ResultWarning, match="empty circuit"):
        empty = discover(lm, task, "eap", threshold=1e9, curve=False)
    assert empty.metrics.n_edges == 0 and any(w.startswith("empty circuit") for w in empty.warnings)


def test_a_whole_graph_result_warns_and_a_partial_one_does_not(lm, task):
    n = len(discover(lm, task, "eap", top_n=1, curve=False).edges)
    with pytest.warns(ResultWarning, match="whole graph"):
        whole = discover(lm, task, "eap", top_n=n, prune=False, curve=False)
    assert whole.metrics.n_edges == n and any(w.startswith("whole graph") for w in whole.warnings)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        part = discover(lm, task, "eap", top_n=n // 2, prune=False, curve=False)
    assert not [w for w in part.warnings if w.startswith(("whole graph", "empty circuit"))]
    assert not [w for w in seen if "whole graph" in str(w.message) or "empty circuit" in str(w.message)]
    nodes = discover(lm, task, "exact", level="node", top_n=10**6, curve=False)
    assert any(w.startswith("whole graph") for w in nodes.warnings)
    assert np.all([n.in_circuit for n in nodes.nodes if n.score is not None])
