"""The QK fix (discovery/methods/qk.py) against exact single-edge patching."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tiny
from discovery import Setup, get_metric, load_model, score_edges, task_from_rows, wrap_model
from discovery.methods.qk import heads_fed
from discovery.task_library import build_task

pytestmark = pytest.mark.usefixtures("one_thread")


def _qk_mask(graph):
    return np.array([graph.reader_slot[d] in ("q", "k") for d in graph.edge_dst])


@pytest.fixture(scope="module")
def saturated_induction():
    """toy:induction (trained; its induction heads attend ~0.96 to one key) with layer 1's output
    projection scaled by 0.05: the patterns are untouched, so attention stays saturated, and what the
    heads write is small, so the metric is near linear in it and the only nonlinearity an edge into
    a k slot meets is the softmax."""
    lm = load_model("toy:induction", device="cpu")
    with torch.no_grad():
        lm.adapter.heads(1).out.mul_(0.05)
    task = build_task("induction", lm.tokenizer, lm.vocab_size, n=8, seed=1000)
    setup = Setup(lm, task, get_metric("logit_diff"), batch_size=8)
    return setup, score_edges(setup, "exact").numpy()


@pytest.mark.parametrize("method", ["eap", "eap-ig", "clean-corrupted"])
def test_qk_fix_follows_exact_patching_where_plain_gradients_see_nothing(saturated_induction, method):
    setup, exact = saturated_induction
    g = setup.graph
    k = np.array([g.reader_slot[d] == "k" for d in g.edge_dst])
    plain = score_edges(setup, method, steps=3).numpy()
    fixed = score_edges(setup, method, steps=3, qk_fix=True).numpy()
    big = np.abs(exact[k]).max()
    composition = [g.edge_index[f"a0.h3->a1.h{h}<k>"] for h in range(4)]  # previous-token -> induction keys
    assert (np.abs(exact[composition]) > 0.3).all()
    # saturated softmax: the linear estimate misses at least half of each (EAP: ~all of it)
    assert (np.abs(plain[composition] - exact[composition]) > 0.5 * np.abs(exact[composition])).all()
    if method == "eap":
        assert np.abs(plain[composition]).max() < 0.1 * big
    np.testing.assert_allclose(fixed[k], exact[k], atol=0.03 * big)
    # the other edges keep the method's own estimate
    np.testing.assert_array_equal(fixed[~_qk_mask(g)], plain[~_qk_mask(g)])


def _current_token_heads(family, c=100.0, v_scale=0.05):
    """One layer whose every query is c times its key (GQA: its key/value head's): each head attends
    to the token most like its own, sharply; values scaled down so the metric is near linear in them."""
    lm = wrap_model(tiny.build(family, n_layers=1, seed=1))
    a = lm.adapter
    group = a.n_heads // a.n_kv_heads
    with torch.no_grad():
        w = a.heads(0)
        for h in range(a.n_heads):
            w.q[h].copy_(c * w.k[h // group])
        for t in (w.q_bias, w.k_bias):
            if t is not None:
                t.zero_()
        for t in (w.v, w.v_bias):
            if t is not None:
                t.mul_(v_scale)
    return lm


def _distinct_rows(n, length, seed):
    """Rows of distinct tokens whose last token is corrupted (its query and key both change)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        t = torch.randperm(tiny.VOCAB, generator=g)[:length + 1].tolist()
        rows.append({"clean_ids": t[:length], "corrupted_ids": t[:length - 1] + [t[length]], "answer_id": t[length - 1],
                     "wrong_id": t[length]})
    return rows


@pytest.mark.parametrize("family,kv_edges", [(f, "head") for f in tiny.FAMILIES] + [("llama", "grouped")])
def test_qk_fix_on_every_architecture_is_closer_to_exact_than_plain_eap(family, kv_edges):
    lm = _current_token_heads(family)
    setup = Setup(lm, task_from_rows(_distinct_rows(8, 6, 0), vocab_size=tiny.VOCAB), get_metric("logit_diff"),
                  batch_size=8, kv_edges=kv_edges)
    qk = _qk_mask(setup.graph)
    exact = score_edges(setup, "exact").numpy()[qk]
    plain = score_edges(setup, "eap").numpy()[qk]
    fixed = score_edges(setup, "eap", qk_fix=True).numpy()[qk]
    big = np.abs(exact).max()
    assert big > 1e-3
    err_fixed, err_plain = np.abs(fixed - exact).max(), np.abs(plain - exact).max()
    assert err_fixed < 0.15 * big
    assert err_fixed < 0.5 * err_plain


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_qk_fix_is_plain_eap_for_tiny_deltas(family):
    """Soft attention (the random model as built) and a corrupted token whose embedding is the clean
    one's plus 1e-3 noise: the exact pattern change is the linear one, so the fix equals EAP."""
    hf = tiny.build(family, n_layers=2, seed=0)
    rows = _distinct_rows(4, 6, 1)
    emb = hf.get_input_embeddings().weight
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for r in rows:
            emb[r["wrong_id"]] = emb[r["answer_id"]] + 1e-3 * torch.randn(emb.shape[1], generator=g)
    setup = Setup(wrap_model(hf), task_from_rows(rows, vocab_size=tiny.VOCAB), get_metric("logit_diff"), batch_size=4)
    qk = _qk_mask(setup.graph)
    plain = score_edges(setup, "eap").numpy()[qk]
    fixed = score_edges(setup, "eap", qk_fix=True).numpy()[qk]
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(fixed, plain, rtol=0, atol=0.02 * np.abs(plain).max())


def test_a_k_slot_feeds_its_group_or_its_own_query_head():
    """k readers per key/value head (`a1.kv0<k>`, today's grouped graph) change the patterns of the
    whole group; per query head (`a1.h2<k>`) only that head's; q readers their own head."""
    g = SimpleNamespace(n_heads=4, n_kv_heads=2, group_size=2, reader_owner=["a1.h2", "a1.kv1", "a1.h3", "a1.h1"],
                        reader_slot=["q", "k", "k", "v"])
    assert heads_fed(g, 0) == (2, [2])
    assert heads_fed(g, 1) == (1, [2, 3])
    assert heads_fed(g, 2) == (1, [3])


def test_the_fix_applies_to_gradient_methods_only(models, task):
    from discovery import UserError
    setup = Setup(models["gpt2"], task, get_metric("logit_diff"))
    with pytest.raises(UserError, match="QK fix"):
        score_edges(setup, "exact", qk_fix=True)


@pytest.mark.parametrize("head_space", [True, False])
@pytest.mark.parametrize("family,kv_edges", [(f, "head") for f in tiny.FAMILIES] + [("llama", "grouped")])
def test_the_norms_closed_form_gives_the_norm_modules_scores(family, kv_edges, head_space, monkeypatch):
    """qk.py's fast path (LayerNorm / RMSNorm in closed form; head deltas through composed maps kept
    across batches, or d-wide) against the general path that calls the model's own norm module."""
    from discovery.methods import qk

    monkeypatch.setattr(qk, "HEAD_SPACE_TOKENS", 0 if head_space else 10**9)
    hf = tiny.build(family, n_layers=3, seed=1)
    setup = Setup(wrap_model(hf), task_from_rows(_distinct_rows(6, 6, 2), vocab_size=tiny.VOCAB),
                  get_metric("logit_diff"), batch_size=4, kv_edges=kv_edges)  # two batches
    assert all(setup.adapter.attn_norm_affine(layer) is not None for layer in range(3))
    fast = score_edges(setup, "eap", qk_fix=True).numpy()
    monkeypatch.setattr(qk, "FAST", False)
    general = score_edges(setup, "eap", qk_fix=True).numpy()
    qk_edges = _qk_mask(setup.graph)
    assert np.abs(general[qk_edges]).max() > 1e-4
    np.testing.assert_allclose(fast, general, rtol=1e-4, atol=1e-5 * np.abs(general).max())
