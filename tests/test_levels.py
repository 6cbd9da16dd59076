"""Node- and neuron-level circuits: scores, exact patching, neuron masks, files and the CLI."""

from discovery.core.circuit import SCHEMA_VERSION
import json

import numpy as np
import pytest
import torch

import tiny
from conftest import token_rows
from discovery import Circuit, Setup, UserError, discover, evaluate, score_edges, task_from_rows, wrap_model
from discovery.cli import main
from discovery.pipeline.levels import neuron_circuit_metrics, node_edges
from discovery.methods.node import neuron_scores, node_scores
from discovery.pipeline.evaluation import circuit_metrics
from node_reference import library_node_scores, patched_logits

pytestmark = pytest.mark.usefixtures("one_thread")


def _task(rows):
    return task_from_rows(rows, vocab_size=tiny.VOCAB)


def _tensors(rows):
    clean = torch.tensor([r["clean_ids"] for r in rows])
    corrupted = torch.tensor([r["corrupted_ids"] for r in rows])
    ans, wrong = torch.tensor([r["answer_id"] for r in rows]), torch.tensor([r["wrong_id"] for r in rows])
    return clean, corrupted, ans, wrong


def _logit_diff(ans, wrong):
    def per_example(logits):
        last = logits[:, -1]
        return last[torch.arange(len(ans)), ans] - last[torch.arange(len(ans)), wrong]
    return per_example


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
@pytest.mark.parametrize("method", ["eap", "eap-ig", "clean-corrupted"])
def test_gradient_node_scores_are_the_summed_scores_of_their_outgoing_edges(family, method):
    """delta_s . sum_r grad_r = sum_r delta_s . grad_r: a node's score is the sum over its edges."""
    lm = wrap_model(tiny.build(family, seed=1))
    setup = Setup(lm, _task(token_rows(n=5, seed=2)), "logit_diff", batch_size=2)
    edges = score_edges(setup, method, steps=3)
    summed = torch.zeros(setup.graph.n_sources).index_add_(0, torch.as_tensor(setup.graph.edge_src), edges)
    nodes = node_scores(setup, method, steps=3)
    assert nodes.abs().max() > 0.01
    torch.testing.assert_close(nodes, summed, rtol=1e-4, atol=1e-6)
    neurons = neuron_scores(setup, method, steps=3)
    assert neurons.shape == (setup.graph.n_sources, lm.adapter.d_model)
    torch.testing.assert_close(neurons.sum(1), nodes, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_node_and_neuron_scores_match_the_libraries_procedure_on_the_hf_model(family, method):
    model = tiny.build(family, seed=4)
    rows = token_rows(n=4, seed=5)
    clean, corrupted, ans, wrong = _tensors(rows)
    metric = lambda logits: _logit_diff(ans, wrong)(logits).sum()  # noqa: E731
    setup = Setup(wrap_model(model), _task(rows), "logit_diff", batch_size=4)
    ours = neuron_scores(setup, method, steps=4).double()
    ref = library_node_scores(model, clean, corrupted, metric, method="EAP" if method == "eap" else "EAP-IG",
                              steps=4, mlp_grad="output", neuron=True)
    torch.testing.assert_close(ours, ref, rtol=1e-3, atol=1e-5 * ref.abs().max().item())
    # the library itself takes an MLP's gradient at its input: same heads and input, other MLP scores
    lib = library_node_scores(model, clean, corrupted, metric, method="EAP", mlp_grad="input")
    heads = [s for s, name in enumerate(setup.graph.sources) if not name.startswith("m")]
    mlps = [s for s, name in enumerate(setup.graph.sources) if name.startswith("m")]
    if method == "eap":
        torch.testing.assert_close(ours.sum(1)[heads], lib[heads], rtol=1e-3, atol=1e-6)
        assert not torch.allclose(ours.sum(1)[mlps], lib[mlps], rtol=1e-2)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_node_eap_ig_activations_tends_to_the_exact_node_scores(family):
    """Integrated gradients along one node's output: complete, so with many steps the score is the
    measured effect of switching that node; with one step (alpha = 1) it is EAP."""
    lm = wrap_model(tiny.build(family, seed=1))
    setup = Setup(lm, _task(token_rows(n=4, seed=2)), "logit_diff", batch_size=4)
    exact = node_scores(setup, "exact")
    torch.testing.assert_close(node_scores(setup, "eap-ig-activations", steps=1), node_scores(setup, "eap"),
                               rtol=1e-4, atol=1e-6)
    coarse = node_scores(setup, "eap-ig-activations", steps=4)
    fine = neuron_scores(setup, "eap-ig-activations", steps=64)
    err = lambda x: (x - exact).abs().max().item()  # noqa: E731
    assert err(fine.sum(1)) < 0.02 * exact.abs().max().item() and err(fine.sum(1)) < err(coarse) / 4


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_exact_node_patching_equals_a_hand_written_rerun(family):
    model = tiny.build(family, seed=7)
    rows = token_rows(n=3, seed=8)
    clean, corrupted, ans, wrong = _tensors(rows)
    setup = Setup(wrap_model(model), _task(rows), "logit_diff", batch_size=2)
    scores = node_scores(setup, "exact")
    ld = _logit_diff(ans, wrong)
    with torch.no_grad():
        base = ld(model(clean).logits).mean()
    assert scores.abs().max() > 0.01
    for node in ["input", "a0.h1", "a1.h3", "m0", "m1"]:
        patched = ld(patched_logits(model, clean, corrupted, node)).mean()
        assert scores[setup.graph.source_index[node]].item() == pytest.approx((patched - base).item(), abs=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_neuron_circuit_patches_exactly_the_dimensions_left_out(family):
    model = tiny.build(family, seed=9)
    rows = token_rows(n=3, seed=10)
    clean, corrupted, ans, wrong = _tensors(rows)
    setup = Setup(wrap_model(model), _task(rows), "logit_diff", batch_size=3)
    g, d = setup.graph, setup.adapter.d_model
    dims = [0, 3, 7, 8, 20, 31]
    circuits, expected = [], []
    for node in ["m0", "a1.h2", "input"]:
        keep = np.ones((g.n_sources, d), bool)
        keep[g.source_index[node], dims] = False
        circuits.append(keep)
        expected.append(_logit_diff(ans, wrong)(patched_logits(model, clean, corrupted, node, dims)).numpy())
    values = neuron_circuit_metrics(setup, circuits, per_example=True, max_bytes=1)  # one circuit per pass
    np.testing.assert_allclose(values, np.stack(expected), atol=1e-4)
    # several circuits in one pass give the same
    np.testing.assert_allclose(neuron_circuit_metrics(setup, circuits, per_example=True), values, atol=1e-5)


def test_node_circuits_and_neuron_circuits_agree_with_edge_evaluation():
    lm = wrap_model(tiny.build("neox", seed=3))
    setup = Setup(lm, _task(token_rows(n=4, seed=6)), "logit_diff", batch_size=4)
    g, d = setup.graph, lm.adapter.d_model
    nodes = np.zeros(g.n_sources, bool)
    nodes[[0, 2, 5, 7]] = True
    neurons = np.repeat(nodes[:, None], d, 1)
    by_edges = circuit_metrics(setup, [np.ones(g.n_edges, bool), np.zeros(g.n_edges, bool), node_edges(g, nodes)])
    by_neurons = neuron_circuit_metrics(setup, [np.ones((g.n_sources, d), bool), np.zeros((g.n_sources, d), bool),
                                                neurons])
    np.testing.assert_allclose(by_neurons, by_edges, atol=1e-5)
    assert by_edges[0] != pytest.approx(by_edges[1])
    # an edge circuit of every edge out of the kept nodes (into out nodes too) is the same circuit
    loose = nodes[g.edge_src]
    np.testing.assert_allclose(circuit_metrics(setup, [loose]), by_edges[2:], atol=1e-5)


def test_discover_at_the_node_and_neuron_level_writes_a_file_evaluate_reproduces(tmp_path):
    lm = wrap_model(tiny.build("gpt2", seed=1))
    task = _task(token_rows(n=5, seed=2))
    node = discover(lm, task, "eap-ig", level="node", top_n=4, batch_size=2, steps=2)
    assert node.level == "node" and node.schema_version == SCHEMA_VERSION and node.selection.pruned is False
    scored = [n for n in node.nodes if n.score is not None]
    assert len(scored) == 11  # input, 2 x (4 heads + MLP)
    top4 = sorted(scored, key=lambda n: -abs(n.score))[:4]
    assert {n.id for n in node.nodes if n.in_circuit} == {n.id for n in top4} | {"logits"}
    assert all(e.score is None for e in node.edges)
    assert len(node.metrics.curve_absolute) == 10 and node.metrics.curve_absolute[-1].faithfulness == pytest.approx(1)
    node.save(tmp_path / "node.json")
    back = Circuit.load(tmp_path / "node.json")
    assert back == node
    assert evaluate(lm, task, back, batch_size=2)["circuit"] == pytest.approx(node.metrics.circuit, abs=1e-6)

    neuron = discover(lm, task, "eap", level="neuron", top_n=50, batch_size=2)
    assert neuron.level == "neuron" and neuron.metrics.n_neurons == 50
    assert sum(len(n.neurons or []) for n in neuron.nodes) == 50
    for n in neuron.nodes:  # a node's score is the sum of all its neurons'; the kept ones are listed with theirs
        assert (n.neurons is None) == (n.score is None)
    neuron.save(tmp_path / "neuron.json")
    out = evaluate(lm, task, Circuit.load(tmp_path / "neuron.json"), batch_size=2)
    assert out["n_neurons"] == 50 and out["circuit"] == pytest.approx(neuron.metrics.circuit, abs=1e-6)
    full = discover(lm, task, "eap", level="neuron", top_n=11 * 32, batch_size=2, curve=False)
    assert full.metrics.faithfulness == pytest.approx(1.0, abs=1e-6)


def test_old_files_still_read_as_edge_circuits(tmp_path):
    lm = wrap_model(tiny.build("gpt2", seed=1))
    task = _task(token_rows(n=3, seed=2))
    c = discover(lm, task, "eap", top_n=10, curve=False)
    data = json.loads(c.model_dump_json())
    data["schema_version"] = "1.0"
    del data["level"]
    for n in data["nodes"]:
        for key in ("score", "neurons", "neuron_scores"):
            n.pop(key)
    del data["metrics"]["n_neurons"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = Circuit.load(tmp_path / "old.json")
    assert old.level == "edge" and [e.in_circuit for e in old.edges] == [e.in_circuit for e in c.edges]
    assert evaluate(lm, task, old)["circuit"] == pytest.approx(c.metrics.circuit)


def test_level_errors():
    lm = wrap_model(tiny.build("gpt2", seed=1))
    task = _task(token_rows(n=3, seed=2))
    for kwargs, match in [(dict(level="layer"), "level: .*'edge', 'node' or 'neuron'"),
                          (dict(method="acdc", level="node"), "no node-level"),
                          (dict(method="exact", level="neuron"), "no neuron-level"),
                          (dict(method="acdc", level="neuron"), "no neuron-level"),
                          (dict(level="node", greedy=3), "greedy grows edges"),
                          (dict(level="node", workers=2), "workers shard edge-level")]:
        kwargs = {"method": "eap", **kwargs}
        with pytest.raises(UserError, match=match):
            discover(lm, task, kwargs.pop("method"), curve=False, **kwargs)


def test_cli_level(tmp_path, capsys):
    d = tmp_path
    tiny.build("llama").save_pretrained(d / "model")
    (d / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in token_rows(n=4, seed=2)))
    base = ["discover", "--model", d / "model", "--task", d / "task.jsonl", "--method", "eap", "--no-curve", "--quiet"]
    assert main([str(a) for a in base + ["--level", "node", "--top-n", "3", "--out", d / "n.json"]]) == 0
    out = capsys.readouterr().out
    assert "3 of 11 nodes" in out
    c = json.loads((d / "n.json").read_text())
    kept = [n["id"] for n in c["nodes"] if n["in_circuit"] and n["kind"] != "kv_head"]  # kv: a grouped graph's readers
    assert c["level"] == "node" and len(kept) == 4 and "logits" in kept
    assert main([str(a) for a in base + ["--level", "neuron", "--top-n", "40", "--out", d / "u.json"]]) == 0
    assert "40 neurons" in capsys.readouterr().out
    code = main([str(a) for a in base + ["--level", "neuron", "--method", "exact", "--out", d / "x.json"]])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no neuron-level" in err
    code = main([str(a) for a in base + ["--level", "nodes", "--out", d / "x.json"]])
    assert code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("level", ["node", "neuron"])
def test_node_and_neuron_circuits_export_to_every_format(level):
    from discovery.io.export import FORMATS, export

    lm = wrap_model(tiny.build("gpt2", seed=5))
    c = discover(lm, _task(token_rows(n=4, seed=3)), "eap", level=level, top_n=4 if level == "node" else 40,
                 curve=False)
    data = json.loads(c.model_dump_json())
    for fmt in FORMATS:
        assert export(data, fmt), fmt


def test_node_level_defaults_to_exact_and_gradient_methods_take_the_qk_fix_summed_over_edges():
    lm = wrap_model(tiny.build("gpt2", seed=1))
    task = _task(token_rows(n=4, seed=2))
    default = discover(lm, task, level="node", top_n=3, curve=False, batch_size=4)
    assert default.method.name == "exact" and "qk_fix" not in default.method.params
    c = discover(lm, task, "eap-ig", level="node", top_n=3, curve=False, batch_size=4)
    assert c.method.params["qk_fix"] is True
    setup = Setup(lm, task, "logit_diff", batch_size=4)
    fixed = score_edges(setup, "eap-ig", steps=5, qk_fix=True)
    summed = torch.zeros(setup.graph.n_sources).index_add_(0, torch.as_tensor(setup.graph.edge_src), fixed)
    scores = torch.tensor([n.score for n in c.nodes if n.score is not None])
    torch.testing.assert_close(scores, summed, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(summed, node_scores(setup, "eap-ig", steps=5), rtol=1e-3)  # the fix changes them
    plain = discover(lm, task, "eap-ig", level="node", qk_fix=False, top_n=3, curve=False, batch_size=4)
    torch.testing.assert_close(torch.tensor([n.score for n in plain.nodes if n.score is not None]),
                               node_scores(setup, "eap-ig", steps=5), rtol=1e-5, atol=1e-6)
    neuron = discover(lm, task, level="neuron", top_n=10, curve=False, batch_size=4)
    assert neuron.method.name == "eap-ig" and "qk_fix" not in neuron.method.params
    with pytest.raises(UserError, match="QK fix"):
        discover(lm, task, level="neuron", qk_fix=True, curve=False)
