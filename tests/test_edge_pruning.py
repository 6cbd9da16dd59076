"""Edge Pruning: learned hard-concrete edge masks reach the asked sparsity with a faithful circuit on
a trained model with a known mechanism (the shipped toy:induction), far above a random circuit of the
same size."""

import numpy as np
import pytest

from discovery import Setup, UserError, evaluate_circuit, get_metric, load_model
from discovery.methods.edge_pruning import edge_pruning
from discovery.task_library import build_task

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def induction_setup():
    m = load_model("toy:induction", device="cpu")
    task = build_task("induction", tokenizer=m.tokenizer, vocab_size=m.vocab_size, n=32, seed=0)
    return Setup(m, task, get_metric("logit_diff"), batch_size=32)


def test_reaches_the_target_sparsity_with_a_faithful_circuit(induction_setup):
    setup = induction_setup
    n = setup.graph.n_edges
    r = edge_pruning(setup, sparsity=0.8, steps=100, lr=0.3)
    assert r.in_circuit.sum() == round(0.2 * n)
    assert r.sparsity == pytest.approx(1 - round(0.2 * n) / n)
    assert r.expected_density < 0.3  # the penalty drove the learned gates themselves towards the target
    f = evaluate_circuit(setup, r.in_circuit)["faithfulness"]
    rng = np.random.default_rng(0)
    random_f = []
    for _ in range(3):
        rand = np.zeros(n, bool)
        rand[rng.choice(n, int(r.in_circuit.sum()), replace=False)] = True
        random_f.append(evaluate_circuit(setup, rand)["faithfulness"])
    assert f >= 0.6 and f > max(random_f) + 0.4, (f, random_f)
    # scores rank the circuit first (|score| = P(gate open)); signed as edge scores are for logit_diff
    top = np.argsort(-np.abs(r.scores))[:int(r.in_circuit.sum())]
    assert r.in_circuit[top].all() and (r.scores <= 0).all()


def test_lambda_mode_and_bad_parameters(induction_setup):
    r = edge_pruning(induction_setup, lam=1.0, steps=5)
    assert r.params["lam"] == 1.0 and r.params["sparsity_target"] is None
    assert r.in_circuit.dtype == bool and 0 <= r.sparsity <= 1
    for kw in ({"sparsity": 1.5}, {"sparsity": 0.5, "lam": 1.0}, {"steps": 0}, {"lam": -1.0}):
        with pytest.raises(UserError):
            edge_pruning(induction_setup, **kw)


def test_discover_and_the_cli_record_the_parameters_and_final_sparsity(induction_setup, tmp_path):
    import json
    import subprocess
    import sys

    from discovery import discover

    setup = induction_setup
    c = discover(setup.model, setup.task, "edge-pruning", sparsity=0.8, train_steps=10, curve=False)
    p = c.method.params
    assert c.selection.kind == "edge-pruning" and c.selection.value == 0.8
    assert p["sparsity_target"] == 0.8 and p["train_steps"] == 10 and p["learned_sparsity"] == pytest.approx(0.8, abs=0.01)
    assert p["final_sparsity"] == pytest.approx(1 - c.metrics.n_edges / setup.graph.n_edges)
    assert c.metrics.faithfulness is not None
    out = tmp_path / "ep.json"
    cmd = [sys.executable, "-m", "discovery.cli", "discover", "--model", "toy:induction", "--task", "induction",
           "--n", "16", "--method", "edge-pruning", "--lam", "0.5", "--train-steps", "3", "--no-curve", "--quiet",
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(out.read_text())
    assert saved["method"]["name"] == "edge-pruning" and saved["method"]["params"]["lam"] == 0.5
    bad = subprocess.run(cmd[:-6] + ["--method", "eap", "--sparsity", "0.5", "--out", str(out)], capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "sparsity" in bad.stderr


def test_the_options_model_and_the_method_share_their_defaults():
    from discovery.methods import edge_pruning as ep
    from discovery.pipeline.options import DEFAULT_SPARSITY, DEFAULT_TRAIN_STEPS

    assert (DEFAULT_SPARSITY, DEFAULT_TRAIN_STEPS) == (ep.DEFAULT_SPARSITY, ep.DEFAULT_STEPS)
