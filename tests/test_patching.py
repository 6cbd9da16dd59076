"""The patching core's invariants on every architecture, and agreement with an independent reference."""

import numpy as np
import pytest
import torch

import tiny
from conftest import token_rows
from discovery import Graph, run, wrap_model
from reference import gpt2_edge_forward


def _ids(seed, n=3, p=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, tiny.VOCAB, (n, p), generator=g)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_all_edges_kept_is_the_model_and_none_kept_is_corrupted(models, family):
    lm = models[family]
    a, g = lm.adapter, Graph.from_adapter(lm.adapter)
    clean, corrupted = _ids(1), _ids(2)
    with torch.no_grad():
        hf_clean, hf_corrupted = lm.hf_model(clean).logits, lm.hf_model(corrupted).logits
        ref = run(a, g, corrupted, record=True).acts
        kept = run(a, g, clean, ref=ref, off=torch.zeros(1, g.n_sources, g.n_readers)).logits
        none = run(a, g, clean, ref=ref, off=torch.as_tensor(g.valid, dtype=torch.float32)[None]).logits
    assert (hf_clean - hf_corrupted).abs().max() > 0.5  # the check below is not vacuous
    torch.testing.assert_close(kept, hf_clean, atol=1e-4, rtol=0)
    torch.testing.assert_close(none, hf_corrupted, atol=1e-4, rtol=0)


def test_last_position_read_matches_full_logits(models):
    lm = models["llama"]
    a, g = lm.adapter, Graph.from_adapter(lm.adapter)
    ids, last = _ids(3), torch.tensor([6, 2, 4])
    with torch.no_grad():
        full = run(a, g, ids).logits
        at_last = run(a, g, ids, last=last).logits
    torch.testing.assert_close(at_last, full[torch.arange(3), last])


def test_right_padding_does_not_change_real_positions(models):
    lm = models["neox"]
    a, g = lm.adapter, Graph.from_adapter(lm.adapter)
    ids = _ids(4, n=1, p=5)
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        torch.testing.assert_close(run(a, g, padded).logits[:, :5], run(a, g, ids).logits)


def test_random_edge_subsets_match_the_independent_reference():
    model = tiny.build("gpt2", n_layers=3, seed=5)
    lm = wrap_model(model)
    a, g = lm.adapter, Graph.from_adapter(lm.adapter)
    clean, corrupted = _ids(6, n=2, p=6), _ids(7, n=2, p=6)
    rng = np.random.default_rng(0)
    with torch.no_grad():
        _, ref_outs = gpt2_edge_forward(model, corrupted)
        ref = run(a, g, corrupted, record=True).acts
        for frac in (0.05, 0.3, 0.7):
            off_edges = rng.random(g.n_edges) < frac
            expected, _ = gpt2_edge_forward(model, clean, ref_outs,
                                            {n for n, o in zip(g.edge_names, off_edges) if o})
            off = torch.as_tensor(g.edge_mask_matrix(off_edges), dtype=torch.float32)[None]
            got = run(a, g, clean, ref=ref, off=off).logits
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_batch_of_masks_equals_one_mask_at_a_time(models):
    lm = models["qwen2"]
    a, g = lm.adapter, Graph.from_adapter(lm.adapter)
    clean, corrupted = _ids(8, n=2), _ids(9, n=2)
    rng = np.random.default_rng(1)
    masks = torch.stack([torch.as_tensor(g.edge_mask_matrix(rng.random(g.n_edges) < 0.4), dtype=torch.float32)
                         for _ in range(3)])
    with torch.no_grad():
        ref = run(a, g, corrupted, record=True).acts
        one = [run(a, g, clean, ref=ref, off=m[None]).logits for m in masks]
        rep = lambda t: t.repeat(3, *([1] * (t.dim() - 1)))
        batched = run(a, g, clean.repeat(3, 1), ref=ref.map(rep), off=masks.repeat_interleave(2, 0)).logits
    torch.testing.assert_close(batched, torch.cat(one), atol=1e-5, rtol=0)


def test_zero_ablating_every_edge_leaves_only_biases():
    model = tiny.build("gpt2", n_layers=2, seed=3)
    lm = wrap_model(model)
    a, g = lm.adapter, Graph.from_adapter(lm.adapter)
    from discovery import task_from_rows, get_metric, Setup
    setup = Setup(lm, task_from_rows(token_rows(n=2), vocab_size=tiny.VOCAB), get_metric("logit_diff"),
                  intervention="zero")
    ids = _ids(10, n=2)
    with torch.no_grad():
        ref = setup.reference(None)
        got = run(a, g, ids, ref=ref, off=torch.as_tensor(g.valid, dtype=torch.float32)[None]).logits
        # every reader sees only the constant attention-output biases of the layers before it
        zeros = {k: torch.zeros(2, 7, a.d_model) for k in g.sources}
        expected, _ = gpt2_edge_forward(model, ids, zeros, set(g.edge_names))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_learned_mask_mixing_equals_the_per_row_path(models, family):
    """A learned mask [1, S, R] (edge pruning) goes through the source-major mixing of
    discovery/engine/mixing.py (one buffer of writes, one product per stage); the same mask expanded
    to one copy per row [N, S, R] goes through the per-row einsums. Logits and the mask's gradient
    (and the embedding's) agree."""
    lm = models[family]
    a, g = lm.adapter, Graph.from_adapter(lm.adapter)
    clean, corrupted = _ids(11, n=3), _ids(12, n=3)
    with torch.no_grad():
        ref = run(a, g, corrupted, record=True).acts
    valid = torch.as_tensor(g.valid, dtype=torch.float32)
    z = torch.rand(g.n_sources, g.n_readers, generator=torch.Generator().manual_seed(3)) * valid
    out = {}
    for name in ("mixing", "per_row"):
        off1 = z.clone().requires_grad_(True)
        emb = a.embed(clean).detach().requires_grad_(True)
        off = off1[None] if name == "mixing" else off1[None].expand(clean.shape[0], -1, -1)
        logits = run(a, g, clean, ref=ref, off=off, embeds=emb, last=torch.tensor([6, 3, 5])).logits
        (logits.float() ** 2).sum().backward()
        out[name] = (logits.detach(), off1.grad, emb.grad)
    assert out["mixing"][1].abs().max() > 1e-4  # the gradient comparison is not vacuous
    for got, want in zip(out["mixing"], out["per_row"]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
