"""Each method's score convention: the (estimated or measured) metric change when one edge is
switched to its reference value, mean over examples."""

import numpy as np
import pytest
import torch

import tiny
from conftest import token_rows
from discovery import (Graph, Setup, TaskError, circuit_metrics, get_metric, score_edges, task_from_rows,
                       wrap_model)
from discovery.methods.input_path import input_path_scores
from reference import gpt2_edge_forward


def _setup(lm, task, metric="logit_diff", **kw):
    return Setup(lm, task, get_metric(metric), batch_size=kw.pop("batch_size", 4), **kw)


def test_exact_equals_a_hand_written_rerun_with_that_edge_patched():
    model = tiny.build("gpt2", n_layers=2, seed=11)
    lm = wrap_model(model)
    rows = token_rows(n=3, seed=4)
    scores = score_edges(_setup(lm, task_from_rows(rows, vocab_size=tiny.VOCAB)), "exact")
    g = Graph.from_adapter(lm.adapter)
    clean = torch.tensor([r["clean_ids"] for r in rows])
    corrupted = torch.tensor([r["corrupted_ids"] for r in rows])
    ans, wrong = torch.tensor([r["answer_id"] for r in rows]), torch.tensor([r["wrong_id"] for r in rows])

    def metric(logits):
        last = logits[:, -1]
        return (last[torch.arange(3), ans] - last[torch.arange(3), wrong]).mean()

    with torch.no_grad():
        _, ref = gpt2_edge_forward(model, corrupted)
        base = metric(gpt2_edge_forward(model, clean)[0])
        for name in ["input->a0.h1<q>", "a0.h3->a1.h0<v>", "a1.h2->m1", "m1->logits", "input->logits", "m0->a1.h2<k>"]:
            patched = metric(gpt2_edge_forward(model, clean, ref, {name})[0])
            assert scores[g.edge_index[name]].item() == pytest.approx((patched - base).item(), abs=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_eap_ranking_agrees_with_exact_where_the_model_is_near_linear(family):
    """A small corruption keeps the model in its linear regime around the clean run: each corrupted
    token is a twin whose embedding is the clean token's plus 1% noise, so EAP's first-order
    estimate must match exact patching up to second-order terms."""
    model = tiny.build(family, seed=2)
    g = torch.Generator().manual_seed(0)
    rows = []
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for i in range(4):
            clean = torch.randint(0, 80, (6,), generator=g).tolist()
            twin = 90 + i
            emb[twin] = emb[clean[2]] + 0.01 * emb[clean[2]].norm() * torch.randn(emb.shape[1], generator=g) / emb.shape[1] ** 0.5
            corrupted = clean[:2] + [twin] + clean[3:]
            rows.append({"clean_ids": clean, "corrupted_ids": corrupted, "answer_id": clean[-1], "wrong_id": clean[0]})
    setup = _setup(wrap_model(model), task_from_rows(rows, vocab_size=tiny.VOCAB))
    eap, exact = score_edges(setup, "eap").numpy(), score_edges(setup, "exact").numpy()
    assert np.abs(exact).max() > 0
    np.testing.assert_allclose(eap, exact, atol=0.02 * np.abs(exact).max())
    big = np.abs(exact) > 0.05 * np.abs(exact).max()
    rank = lambda x: np.argsort(np.argsort(x))
    assert np.corrcoef(rank(eap[big]), rank(exact[big]))[0, 1] > 0.98


def test_eap_ig_with_one_step_is_eap(models, task):
    setup = _setup(models["llama"], task)
    torch.testing.assert_close(score_edges(setup, "eap-ig", steps=1), score_edges(setup, "eap"), rtol=0, atol=0)


def test_clean_corrupted_averages_the_gradients_at_both_ends(models, task):
    setup = _setup(models["neox"], task)
    at_corrupted = input_path_scores(setup, [0.0], "t")
    expected = (score_edges(setup, "eap") + at_corrupted) / 2
    torch.testing.assert_close(score_edges(setup, "clean-corrupted"), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "neox", "qwen2"])
def test_eap_ig_input_edges_add_up_to_the_corrupted_minus_clean_metric(models, task, family):
    """Completeness of integrated gradients over the embedding: the scores of all edges leaving
    `input` sum to m(corrupted input) - m(clean) as steps grow."""
    setup = _setup(models[family], task)
    g = setup.graph
    scores = score_edges(setup, "eap-ig", steps=128).numpy()
    from_input = scores[g.edge_src == 0].sum()
    ones, zeros = np.ones(g.n_edges, bool), np.zeros(g.n_edges, bool)
    full, empty = circuit_metrics(setup, [ones, zeros])
    assert abs(full - empty) > 0.02  # not vacuous
    assert from_input == pytest.approx(empty - full, rel=0.05, abs=2e-4)


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_eap_ig_activations_scores_into_a_stage_add_up_to_switching_that_stage(models, task, family):
    setup = _setup(models[family], task)
    g = setup.graph
    scores = score_edges(setup, "eap-ig-activations", steps=128).numpy()
    ones = np.ones(g.n_edges, bool)
    from discovery.methods.eap_ig_activations import residual_points
    for point in residual_points(g):
        readers = np.zeros(g.n_readers, bool)
        for idx in point:
            readers[g.stages[idx].start:g.stages[idx].stop] = True
        into = readers[g.edge_dst]
        full, switched = circuit_metrics(setup, [ones, ~into])
        assert abs(switched - full) > 1e-3  # not vacuous
        assert scores[into].sum() == pytest.approx(switched - full, rel=0.05, abs=2e-4)


def test_kl_scores_measure_distance_from_the_clean_model(models, task):
    setup = _setup(models["gpt2"], task, metric="kl")
    exact = score_edges(setup, "exact").numpy()
    assert (exact >= -1e-6).all()  # switching any edge can only move the output away from clean
    eap = score_edges(setup, "eap").numpy()
    assert np.abs(eap).max() < 1e-4  # KL's gradient vanishes at the clean point: EAP is blind here
    ig = score_edges(setup, "eap-ig", steps=8).numpy()
    assert np.corrcoef(ig, exact)[0, 1] > 0.8  # which is what integrated gradients repair


@pytest.mark.parametrize("method", ["eap", "exact", "eap-ig-activations"])
def test_padding_rows_of_different_lengths_gives_the_per_row_scores(models, method):
    rows = token_rows(n=2, length=5, seed=3) + token_rows(n=2, length=8, seed=4) + token_rows(n=1, length=3, seed=5)
    task = task_from_rows(rows, vocab_size=tiny.VOCAB)
    lm = models["llama"]
    batched = score_edges(_setup(lm, task, batch_size=5), method, steps=3)
    single = score_edges(_setup(lm, task, batch_size=1), method, steps=3)
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_unequal_lengths_need_an_ablation_not_patching(models):
    rows = token_rows(n=3)
    rows[1]["corrupted_ids"] = rows[1]["corrupted_ids"] + [1]
    task = task_from_rows(rows, vocab_size=tiny.VOCAB)
    with pytest.raises(TaskError, match="row 2"):
        _setup(models["gpt2"], task)
    for intervention in ("zero", "mean"):
        scores = score_edges(_setup(models["gpt2"], task, intervention=intervention), "eap")
        assert torch.isfinite(scores).all() and scores.abs().max() > 0


def test_mean_ablation_reference_is_the_token_mean_of_corrupted_outputs(models):
    rows = token_rows(n=3, length=4, seed=8) + token_rows(n=2, length=6, seed=9)
    task = task_from_rows(rows, vocab_size=tiny.VOCAB)
    setup = _setup(models["neox"], task, intervention="mean", batch_size=2)
    mean = setup.reference(None)
    from discovery import run
    with torch.no_grad():
        outs = [run(setup.adapter, setup.graph, torch.tensor([r["corrupted_ids"]]), record=True).acts.mlp[1][0]
                for r in rows]
    expected = torch.cat(outs).mean(0)
    torch.testing.assert_close(mean.mlp[1][0, 0], expected, atol=1e-5, rtol=1e-5)


def test_scores_accumulate_in_fp32_for_a_bf16_model(task):
    model = tiny.build("llama", seed=0)
    fp32 = score_edges(_setup(wrap_model(model), task), "eap").numpy()
    bf16 = score_edges(_setup(wrap_model(tiny.build("llama", seed=0).to(torch.bfloat16)), task), "eap")
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert np.corrcoef(bf16.numpy(), fp32)[0, 1] > 0.95
