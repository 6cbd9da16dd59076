import numpy as np
import pytest

from discovery import Graph, Setup, circuit_metrics, faithfulness_curves, get_metric, greedy, prune, threshold, top_n
from discovery.pipeline.selection import importance


def _edges(g, *names):
    keep = np.zeros(g.n_edges, bool)
    keep[[g.edge_index[n] for n in names]] = True
    return keep


def test_top_n_signed_follows_the_metric_direction():
    g = Graph(1, 2)
    scores = np.linspace(-1, 1, g.n_edges)
    best_for_logit_diff = top_n(g, scores, 2, higher_is_better=True, absolute=False)
    assert set(np.flatnonzero(best_for_logit_diff)) == {0, 1}  # most negative: switching them hurts most
    best_for_kl = top_n(g, scores, 2, higher_is_better=False, absolute=False)
    assert set(np.flatnonzero(best_for_kl)) == {g.n_edges - 1, g.n_edges - 2}
    both_ends = top_n(g, scores, 2, absolute=True)
    assert set(np.flatnonzero(both_ends)) == {0, g.n_edges - 1}


def test_threshold_on_importance():
    g = Graph(1, 2)
    scores = np.zeros(g.n_edges)
    scores[3], scores[5] = -0.5, 0.2
    assert set(np.flatnonzero(threshold(g, scores, 0.3))) == {3}
    assert set(np.flatnonzero(threshold(g, scores, 0.1, higher_is_better=True, absolute=False))) == {3}
    np.testing.assert_array_equal(importance([1.0, -2.0], True, False), [-1.0, 2.0])


def test_prune_drops_edges_without_a_path_from_input_to_logits():
    g = Graph(2, 2)
    keep = _edges(g, "input->a0.h0<q>", "a0.h0->a1.h1<v>", "a1.h1->logits",  # a complete path
                  "a0.h1->m1",  # a0.h1 receives nothing and m1 reaches nothing
                  "input->a1.h0<k>")  # a1.h0 writes nowhere
    assert set(np.flatnonzero(prune(g, keep))) == {g.edge_index[n] for n in
                                                   ["input->a0.h0<q>", "a0.h0->a1.h1<v>", "a1.h1->logits"]}


def test_prune_keeps_a_per_query_head_key_path_only_into_that_head():
    g = Graph(2, 4, n_kv_heads=2)
    keep = _edges(g, "input->a0.h3<k>", "a0.h3->logits", "a0.h2->logits")
    # the key edge feeds query head 3 only (not 2, its group mate): a0.h2 receives nothing
    assert set(np.flatnonzero(prune(g, keep))) == {g.edge_index["input->a0.h3<k>"], g.edge_index["a0.h3->logits"]}


def test_prune_keeps_a_grouped_key_value_path():
    g = Graph(2, 4, n_kv_heads=2, kv_edges="grouped")
    keep = _edges(g, "input->a0.kv1<k>", "a0.h3->logits", "a0.h0->logits")
    # kv head 1 feeds query heads 2 and 3; head 3 reaches the logits, head 0 receives nothing
    assert set(np.flatnonzero(prune(g, keep))) == {g.edge_index["input->a0.kv1<k>"], g.edge_index["a0.h3->logits"]}


def test_greedy_grows_a_connected_circuit_from_the_logits():
    g = Graph(2, 2)
    scores = np.zeros(g.n_edges)
    scores[g.edge_index["m0->a1.h0<q>"]] = 10.0  # the biggest score, but unreachable until a1.h0 is in
    scores[g.edge_index["a1.h0->logits"]] = 1.0
    scores[g.edge_index["input->logits"]] = 0.5
    chosen = greedy(g, scores, 2)
    assert set(np.flatnonzero(chosen)) == {g.edge_index["a1.h0->logits"], g.edge_index["m0->a1.h0<q>"]}


def test_pruning_does_not_change_the_metric_under_patching(models, task):
    setup = Setup(models["neox"], task, get_metric("logit_diff"), batch_size=6)
    rng = np.random.default_rng(0)
    raw = rng.random(setup.graph.n_edges) < 0.15
    pruned = prune(setup.graph, raw)
    assert pruned.sum() < raw.sum()
    a, b = circuit_metrics(setup, [raw, pruned])
    assert a == pytest.approx(b, abs=1e-5)


def test_faithfulness_curve_ends_and_areas(models, task):
    setup = Setup(models["gpt2"], task, get_metric("logit_diff"), batch_size=6)
    scores = np.random.default_rng(1).normal(size=setup.graph.n_edges)
    c = faithfulness_curves(setup, scores)
    assert c["curve_signed"][-1]["faithfulness"] == pytest.approx(1.0)
    assert c["curve_absolute"][-1]["n_edges"] == setup.graph.n_edges
    xs = np.array([0] + [p["percent"] / 100 for p in c["curve_signed"]])
    fs = np.array([0] + [p["faithfulness"] for p in c["curve_signed"]])
    assert c["cpr"] == pytest.approx(np.trapezoid(fs, xs))
    fa = np.array([0] + [p["faithfulness"] for p in c["curve_absolute"]])
    assert c["cmd"] == pytest.approx(np.trapezoid(np.abs(1 - fa), xs))


def test_per_example_metrics_average_to_the_means(models, task):
    setup = Setup(models["llama"], task, get_metric("logit_diff"), batch_size=4)  # 6 rows: a partial batch
    rng = np.random.default_rng(2)
    circuits = [rng.random(setup.graph.n_edges) < f for f in (0.1, 0.5)]
    per = circuit_metrics(setup, circuits, per_example=True)
    assert per.shape == (2, len(task))
    np.testing.assert_allclose(per.mean(1), circuit_metrics(setup, circuits), rtol=1e-9)
    one = Setup(models["llama"], task.subset([3]), get_metric("logit_diff"))  # row 3 on its own
    np.testing.assert_allclose(per[:, 3], circuit_metrics(one, circuits), atol=1e-5)


def test_bootstrap_intervals(models, task):
    setup = Setup(models["gpt2"], task, get_metric("logit_diff"), batch_size=6)
    scores = np.random.default_rng(1).normal(size=setup.graph.n_edges)
    plain = faithfulness_curves(setup, scores)
    c = faithfulness_curves(setup, scores, bootstrap=200, seed=0)
    assert c["cpr"] == plain["cpr"] and c["bootstrap"]["resamples"] == 200
    lo, hi = c["cpr_ci"]
    assert lo < c["cpr"] < hi  # resampling six different examples moves the estimate
    for p in c["curve_absolute"][:-1]:
        assert p["faithfulness_ci"][0] <= p["faithfulness_ci"][1]
    assert c["curve_signed"][-1]["faithfulness_ci"] == pytest.approx([1.0, 1.0])  # the full model, every resample
    same = Setup(models["gpt2"], task.subset([2] * 6), get_metric("logit_diff"), batch_size=6)
    c = faithfulness_curves(same, scores, bootstrap=50)
    assert c["cpr_ci"] == pytest.approx([c["cpr"], c["cpr"]])  # identical examples: no spread


def test_edge_auc_is_the_pairwise_ranking_probability():
    from discovery.pipeline.evaluation import edge_auc

    rng = np.random.default_rng(3)
    scores = rng.normal(size=40)
    scores[:5] = [0.3, -0.3, 2.0, np.nan, 0.0]  # a tie in |score| and an unscored edge
    truth = rng.random(40) < 0.3
    truth[:3] = True
    imp = np.nan_to_num(np.abs(scores), nan=-1.0)
    pos, neg = imp[truth], imp[~truth]
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]  # Mann-Whitney by brute force
    assert edge_auc(scores, truth) == pytest.approx(np.mean(pairs))
    assert np.isnan(edge_auc(scores, np.ones(40, bool)))
