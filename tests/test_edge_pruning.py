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
