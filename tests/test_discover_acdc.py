"""ACDC through discover() and the CLI: the circuit is the reference ACDC's decision, one circuit per
tau, and eap-ig+acdc decides only over EAP-IG's top candidates."""

import json

import numpy as np
import pytest

import tiny
from acdc_reference import acdc_reference
from conftest import token_rows
from discovery import Circuit, Setup, UserError, discover, get_metric, prune, score_edges, task_from_rows, top_n, wrap_model
from discovery.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")  # many small forwards: faster on one thread


@pytest.fixture(scope="module")
def lm():
    return wrap_model(tiny.build("gpt2", n_layers=2))


@pytest.fixture(scope="module")
def acdc_task():
    return task_from_rows(token_rows(n=6, length=6, seed=1, pos=3), vocab_size=tiny.VOCAB)


def _reference_circuit(lm, task, tau, candidates=None):
    setup = Setup(lm, task, get_metric("kl"), batch_size=4)
    ref = acdc_reference(setup, tau, candidates=candidates)
    return setup, ref


def _keep(circuit, graph):
    return circuit.in_circuit(graph)


def test_acdc_circuit_is_the_reference_decision(lm, acdc_task):
    tau = 3e-3
    setup, ref = _reference_circuit(lm, acdc_task, tau)
    c = discover(lm, acdc_task, "acdc", tau=tau, batch_size=4, curve=False)
    assert c.method.params["metric"] == "kl"  # ACDC's default, whatever the task's
    assert c.selection.kind == "acdc" and c.selection.value == tau
    assert c.method.params["n_edges_kept"] == int(ref["in_circuit"].sum())
    np.testing.assert_array_equal(_keep(c, setup.graph), prune(setup.graph, ref["in_circuit"]))
    scores = np.array([np.nan if e.score is None else e.score for e in c.edges])
    np.testing.assert_allclose(scores, ref["scores"], atol=1e-5, equal_nan=True)
    assert c.method.params["n_forward_passes"] > 0
    # the file reports what evaluating exactly those edges gives
    unpruned = discover(lm, acdc_task, "acdc", tau=tau, batch_size=4, curve=False, prune=False)
    np.testing.assert_array_equal(_keep(unpruned, setup.graph), ref["in_circuit"])


def test_one_run_many_taus(lm, acdc_task):
    taus = [1e-3, 1e-2]
    circuits = discover(lm, acdc_task, "acdc", taus=taus, batch_size=4, curve=False)
    assert [c.selection.value for c in circuits] == taus
    graph = Setup(lm, acdc_task, get_metric("kl")).graph
    for tau, c in zip(taus, circuits):
        single = discover(lm, acdc_task, "acdc", tau=tau, batch_size=4, curve=False)
        np.testing.assert_array_equal(_keep(c, graph), _keep(single, graph))
    assert circuits[0].metrics.n_edges >= circuits[1].metrics.n_edges  # a larger tau removes more


def test_eap_ig_then_acdc_over_candidates(lm, acdc_task):
    tau, k = 3e-3, 40
    setup = Setup(lm, acdc_task, get_metric("kl"), batch_size=4)
    cand = top_n(setup.graph, score_edges(setup, "eap-ig", steps=5).numpy(), k)
    _, ref = _reference_circuit(lm, acdc_task, tau, candidates=cand)
    c = discover(lm, acdc_task, "eap-ig+acdc", tau=tau, candidates=k, batch_size=4, curve=True)
    keep = _keep(c, setup.graph)
    np.testing.assert_array_equal(keep, prune(setup.graph, ref["in_circuit"]))
    assert not keep[~cand].any()
    assert c.method.params["candidates"] == k
    assert sum(e.score is None for e in c.edges) == setup.graph.n_edges - k  # undecided edges: no score
    assert c.metrics.cpr is not None
    # every edge a candidate: exactly plain ACDC
    everything = discover(lm, acdc_task, "eap-ig+acdc", tau=tau, candidates=10**6, batch_size=4, curve=False)
    plain = discover(lm, acdc_task, "acdc", tau=tau, batch_size=4, curve=False)
    np.testing.assert_array_equal(_keep(everything, setup.graph), _keep(plain, setup.graph))


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "eap", "tau": 0.1}, "apply to acdc"),
    ({"method": "acdc", "top_n": 5}, "decides the circuit itself"),
    ({"method": "acdc", "candidates": 5}, "applies to eap-ig"),
    ({"method": "eap-ig+acdc", "candidates": 0}, "at least 1"),
    ({"method": "acdc", "tau": -1.0}, "tau"),
])
def test_bad_acdc_arguments(lm, acdc_task, kwargs, match):
    method = kwargs.pop("method")
    with pytest.raises(UserError, match=match):
        discover(lm, acdc_task, method, curve=False, **kwargs)


def test_cli_writes_one_file_per_tau(tmp_path, capsys):
    model = tmp_path / "model"
    tiny.build("gpt2", n_layers=2).save_pretrained(model)
    task = tmp_path / "t.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in token_rows(n=6, length=6, seed=1, pos=3)))
    out = tmp_path / "c.json"
    code = main(["discover", "--model", str(model), "--task", str(task), "--method", "acdc", "--tau", "1e-3,1e-2",
                 "--batch-size", "4", "--no-curve", "--quiet", "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert code == 0 and len(printed) == 2 and "forward passes" in printed[0]
    files = [tmp_path / "c.tau=0.001.json", tmp_path / "c.tau=0.01.json"]
    circuits = [Circuit.load(f) for f in files]
    assert [c.method.params["tau"] for c in circuits] == [1e-3, 1e-2]
    code = main(["discover", "--model", str(model), "--task", str(task), "--method", "acdc", "--tau", "1e-2,x",
                 "--quiet", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--tau takes numbers" in err and "Traceback" not in err
