"""Evaluation whose cost follows the circuit: skipping nodes changes nothing, on every architecture.

The independent computation is the plain patching core: one full `run()` from the embeddings per
circuit, every node computed at every position (methods.common.masked_metric_values)."""

import numpy as np
import pytest
import torch

import tiny
from conftest import token_rows
from discovery import Setup, circuit_metrics, get_metric, task_from_rows
from discovery.methods.common import masked_metric_values
from discovery.engine.patching import run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():
    return task_from_rows(token_rows(n=6, length=7, seed=3, pos=2), vocab_size=tiny.VOCAB)


def _circuits(graph, seed=0):
    """Circuits of every size: full, empty, sparse (many nodes with every input corrupted, many
    without a path to the logits), half and nearly full."""
    rng = np.random.default_rng(seed)
    n = graph.n_edges
    out = [np.ones(n, bool), np.zeros(n, bool)]
    for frac in (0.02, 0.1, 0.5, 0.95):
        out.append(rng.random(n) < frac)
    into_logits = np.array([graph.readers[d] == "logits" for d in graph.edge_dst])
    out.append(into_logits)  # only the direct paths: every head and MLP sees the corrupted residual
    return out


def _plain(setup, circuits):
    """Mean metric of each circuit by a full forward from the embeddings (no caching, no skipping)."""
    g = setup.graph
    offs = torch.stack([torch.as_tensor(g.valid & ~g.edge_mask_matrix(c)) for c in circuits]).float()
    total = np.zeros(len(circuits))
    for batch in setup.batches():
        ref = setup.reference(batch)
        clean_logits = setup.clean_run(batch).logits
        total += masked_metric_values(setup, batch, ref, offs, clean_logits).sum(1).cpu().numpy()
    return total / len(setup.task)


@pytest.mark.parametrize("family", tiny.FAMILIES)
@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_node_skipping_equals_no_skipping(models, task, family, metric):
    setup = Setup(models[family], task, get_metric(metric), batch_size=4)  # two batches, one partial
    circuits = _circuits(setup.graph)
    skipped = circuit_metrics(setup, circuits)
    np.testing.assert_allclose(skipped, circuit_metrics(setup, circuits, skip=False), rtol=0, atol=1e-5)
    np.testing.assert_allclose(skipped, _plain(setup, circuits), rtol=0, atol=1e-5)
    several_per_pass = circuit_metrics(setup, circuits, max_rows=512)  # all circuits in one forward
    np.testing.assert_allclose(skipped, several_per_pass, rtol=0, atol=1e-5)


@pytest.mark.parametrize("intervention", ["zero", "mean"])
def test_ablations_equal_the_plain_core(models, task, intervention):
    setup = Setup(models["llama"], task, get_metric("logit_diff"), batch_size=4, intervention=intervention)
    circuits = _circuits(setup.graph, seed=1)
    skipped = circuit_metrics(setup, circuits)
    np.testing.assert_allclose(skipped, circuit_metrics(setup, circuits, skip=False), rtol=0, atol=1e-5)
    # Zero ablation feeds a norm with a residual that is ~0 up to float noise (the two engines sum in
    # different orders), which the norm scales up: agreement to 1e-4 there.
    np.testing.assert_allclose(skipped, _plain(setup, circuits), rtol=0, atol=1e-4)


def test_sparse_circuits_skip_most_nodes(models, task, monkeypatch):
    """The cost follows the circuit: with only edges into the logits kept, no head or MLP is run
    (each sees the corrupted residual, so it writes its corrupted output); the full and empty
    circuits run nothing beyond the batch's clean and corrupted runs, made once per setup."""
    import discovery.engine.cached as cached

    setup = Setup(models["gpt2"], task, get_metric("logit_diff"), batch_size=6)
    g = setup.graph
    calls = {"mlp": 0}
    real_mlp = setup.adapter.mlp

    def counting_mlp(layer, x):
        calls["mlp"] += 1
        return real_mlp(layer, x)

    into_logits = np.array([g.readers[d] == "logits" for d in g.edge_dst])
    circuit_metrics(setup, [into_logits])  # builds the batch's cache (its clean and corrupted runs)
    monkeypatch.setattr(setup.adapter, "mlp", counting_mlp)
    attends = {"n": 0}
    real_attend = cached.attend_at
    monkeypatch.setattr(cached, "attend_at", lambda *a, **k: attends.__setitem__("n", attends["n"] + 1) or real_attend(*a, **k))
    import discovery.pipeline.evaluation as evaluation
    evaluation.forget(setup)  # run it again (not from the setup's memo of evaluated circuits)
    circuit_metrics(setup, [into_logits, np.ones(g.n_edges, bool), np.zeros(g.n_edges, bool)])
    assert calls["mlp"] == 0 and attends["n"] == 0
    one = np.zeros(g.n_edges, bool)
    one[g.edge_index["a0.h1->m1"]] = one[g.edge_index["m1->logits"]] = True
    circuit_metrics(setup, [one])
    assert calls["mlp"] == 1 and attends["n"] == 0  # m1 alone: a0.h1 sees only corrupted inputs, not run


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_cached_runs_of_several_masks_equal_the_plain_run_at_every_start_stage(models, task, family):
    """run(cache=, start_stage=) for K masks at once, each agreeing with the base circuit before the
    start stage (ACDC's masks); and from stage 0, any masks (evaluation's)."""
    lm = models[family]
    setup = Setup(lm, task, get_metric("logit_diff"), batch_size=6)
    g = setup.graph
    batch = next(iter(setup.batches()))
    c = setup.run_cache(batch)
    rng = np.random.default_rng(5)
    for start in [0] + list(range(len(g.stages))):
        later = g.edge_dst >= g.stages[start].start
        for density in (0.1, 0.6, 0.95):
            masks = []
            for _ in range(3):
                keep = np.ones(g.n_edges, bool)
                keep[later] = rng.random(int(later.sum())) < density
                masks.append(keep)
            off = torch.stack([torch.as_tensor(g.valid & ~g.edge_mask_matrix(m)) for m in masks]).float()
            got = run(lm.adapter, g, batch.clean, cache=c, start_stage=start, off=off).logits
            want = torch.cat([run(lm.adapter, g, batch.clean, last=batch.clean_last, ref=c.ref, off=o[None]).logits
                              for o in off])
            torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_each_circuit_is_evaluated_once_per_setup(models, task, monkeypatch):
    """A circuit given twice in one call, or again in a later call (the target search, the chosen
    circuit and the curve share circuits), runs once; the memo returns the same numbers as running it."""
    import discovery.pipeline.evaluation as evaluation

    setup = Setup(models["gpt2"], task, get_metric("logit_diff"), batch_size=4)
    circuits = _circuits(setup.graph, seed=2)[2:6]
    runs = {"n": 0}
    real_run = evaluation.run_cached
    monkeypatch.setattr(evaluation, "run_cached", lambda *a, **k: runs.__setitem__("n", runs["n"] + 1) or real_run(*a, **k))
    first = circuit_metrics(setup, circuits + [circuits[0]], per_example=True)
    assert runs["n"] == 4 * 2  # 4 distinct circuits x 2 batches
    np.testing.assert_array_equal(first[0], first[-1])
    again = circuit_metrics(setup, [circuits[1], circuits[3]], per_example=True)
    assert runs["n"] == 8
    np.testing.assert_array_equal(again, first[[1, 3]])
    fresh = Setup(models["gpt2"], task, get_metric("logit_diff"), batch_size=4)
    np.testing.assert_allclose(circuit_metrics(fresh, circuits), first[:4].mean(1), rtol=0, atol=1e-6)
    assert runs["n"] == 16


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_evaluation_after_scoring_reuses_the_scoring_runs(models, task, family):
    """A scoring pass (EAP with the QK fix records the clean run's residuals) leaves each batch's
    clean and corrupted runs to its RunCache, which then runs neither again; the numbers equal a
    fresh setup's and the plain core's."""
    from discovery import score_edges

    setup = Setup(models[family], task, get_metric("logit_diff"), batch_size=4)
    score_edges(setup, "eap", qk_fix=True)
    circuits = _circuits(setup.graph, seed=4)
    reused = circuit_metrics(setup, circuits)
    assert setup.runs.caches() and all(c.n_forwards == 0 for c in setup.runs.caches())
    assert setup.runs.n_kept_runs() == 0  # taken by the caches
    fresh = Setup(models[family], task, get_metric("logit_diff"), batch_size=4)
    np.testing.assert_allclose(reused, circuit_metrics(fresh, circuits), rtol=0, atol=1e-6)
    assert all(c.n_forwards == 1 for c in fresh.runs.caches())
    np.testing.assert_allclose(reused, _plain(fresh, circuits), rtol=0, atol=1e-5)
