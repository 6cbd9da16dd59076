"""ACDC: the fast implementation decides exactly the edges the plain reference decides
(tests/acdc_reference.py: one full forward per measured edge), on every architecture."""

import numpy as np
import pytest
import torch

import tiny
from acdc_reference import acdc_reference
from conftest import token_rows
from discovery import Setup, UserError, get_metric, task_from_rows, wrap_model
from discovery.methods.acdc import ACDCResult, acdc

# Float noise between the two implementations is ~1e-7 (same masks, different forward passes); a
# decision whose loss of behaviour lies closer than this to tau could go either way, so the tests
# use thresholds whose every measured decision is at least this far from tau.
MARGIN = 1e-5
TAUS = {"kl": [1e-4, 3e-4, 1e-3, 3e-3], "logit_diff": [1e-3, 3e-3, 1e-2, 3e-2]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def acdc_task():
    """Six rows (two data batches of 4 and 2) corrupted in the middle, so that edges in every layer matter."""
    return task_from_rows(token_rows(n=6, length=6, seed=1, pos=3), vocab_size=tiny.VOCAB)


def _setup(lm, task, metric="kl", **kw):
    return Setup(lm, task, get_metric(metric), batch_size=kw.pop("batch_size", 4), **kw)


def _hurt(setup, scores, absolute=False):
    return np.abs(scores) if absolute else (-scores if setup.metric.higher_is_better else scores)


def _margin(setup, ref, tau, absolute=False):
    measured = ~np.isnan(ref["scores"]) & (ref["scores"] != 0)
    hurt = _hurt(setup, ref["scores"][measured], absolute)
    return float(np.min(np.abs(hurt - tau))) if measured.any() else np.inf


def _references(setup, taus, n, **kw):
    """(tau, reference result) for the first n thresholds whose decisions are all MARGIN away from tau."""
    out = []
    for tau in taus:
        ref = acdc_reference(setup, tau, **kw)
        if _margin(setup, ref, tau, kw.get("absolute", False)) >= MARGIN:
            out.append((tau, ref))
            if len(out) == n:
                return out
    raise AssertionError(f"fewer than {n} of the thresholds {taus} are float-proof here")


def _assert_same(res: ACDCResult, ref: dict):
    assert np.array_equal(res.in_circuit, ref["in_circuit"])
    assert np.array_equal(np.isnan(res.scores), np.isnan(ref["scores"]))
    both = ~np.isnan(ref["scores"])
    np.testing.assert_allclose(res.scores[both], ref["scores"][both], rtol=0, atol=2e-6)
    assert res.n_edges_evaluated == ref["n_edges_evaluated"]


@pytest.mark.parametrize("metric", ["kl", "logit_diff"])
@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_same_edges_as_the_reference(models, acdc_task, family, metric):
    setup = _setup(models[family], acdc_task, metric)
    kept = 0
    for tau, ref in _references(setup, TAUS[metric], 2):
        res = acdc(setup, tau)
        _assert_same(res, ref)
        assert res.n_forward_passes < ref["n_forward_passes"]
        kept += int(res.in_circuit.sum())
    assert kept > 0  # not vacuous


def test_several_taus_in_one_call_equal_separate_calls(models, acdc_task):
    setup = _setup(models["llama"], acdc_task, "logit_diff")
    taus = [1e-3, 3e-3, 1e-2, 3e-2]
    together = acdc(setup, taus=taus)
    assert [r.tau for r in together] == taus
    separate = [acdc(setup, t) for t in taus]
    for a, b in zip(together, separate):
        assert np.array_equal(a.in_circuit, b.in_circuit)
        np.testing.assert_allclose(a.scores, b.scores, rtol=0, atol=2e-6, equal_nan=True)
    assert len({int(r.in_circuit.sum()) for r in together}) > 1  # the thresholds do differ
    assert together[0].n_forward_passes < sum(r.n_forward_passes for r in separate)


def test_tau_zero_keeps_every_edge_whose_removal_hurts(models, acdc_task):
    setup = _setup(models["neox-seq"], acdc_task, "logit_diff")
    res = acdc(setup, 0.0)
    decided = ~np.isnan(res.scores)
    assert decided.all()
    hurt = _hurt(setup, res.scores)
    assert np.array_equal(res.in_circuit, hurt > 0)
    assert 0 < res.in_circuit.sum() < len(res.in_circuit)


def test_huge_tau_removes_everything(models, acdc_task):
    setup = _setup(models["qwen2"], acdc_task, "kl")
    for tau in (1e9, float("inf")):
        res = acdc(setup, tau)
        assert not res.in_circuit.any()
        # only the edges into the logits are measured; every other destination is dead by then
        assert res.n_edges_evaluated == setup.graph.n_sources
        assert res.n_edges_dead == setup.graph.n_edges - setup.graph.n_sources


def test_candidates_are_the_only_edges_decided(models, acdc_task):
    setup = _setup(models["llama"], acdc_task, "logit_diff")
    g = setup.graph
    candidates = np.random.default_rng(0).random(g.n_edges) < 0.6
    candidates[g.edge_dst == g.n_readers - 1] = True  # every edge into the logits
    kept = 0
    for tau, ref in _references(setup, [1e-3, 3e-3, 1e-2], 2, candidates=candidates):
        res = acdc(setup, tau, candidates=candidates)
        _assert_same(res, ref)
        assert not res.in_circuit[~candidates].any()
        assert np.isnan(res.scores[~candidates]).all() and not np.isnan(res.scores[candidates]).any()
        kept += int(res.in_circuit.sum())
    assert kept > 0


@pytest.mark.parametrize("intervention", ["zero", "mean"])
def test_ablations_match_the_reference(models, acdc_task, intervention):
    setup = _setup(models["llama"], acdc_task, "logit_diff", intervention=intervention)
    for tau, ref in _references(setup, [0.01, 0.03, 0.1], 2):
        _assert_same(acdc(setup, tau), ref)


def test_rows_of_different_lengths_and_absolute_scores(models):
    rows = token_rows(n=3, length=5, seed=3, pos=2) + token_rows(n=2, length=8, seed=4, pos=4)
    setup = _setup(models["mistral"], task_from_rows(rows, vocab_size=tiny.VOCAB), "logit_diff", batch_size=5)
    for absolute in (False, True):
        [(tau, ref)] = _references(setup, [0.01, 0.02, 0.05], 1, absolute=absolute)
        res = acdc(setup, tau, absolute=absolute)
        _assert_same(res, ref)
        assert res.in_circuit.any()


def test_a_deeper_model(acdc_task):
    """Four layers: chains that cross stages, memoised nodes and the cached upstream get exercised."""
    setup = _setup(wrap_model(tiny.build("gpt2", n_layers=4, seed=7)), acdc_task, "logit_diff", batch_size=6)
    [(tau, ref)] = _references(setup, [1e-3, 3e-3], 1)
    res = acdc(setup, tau)
    _assert_same(res, ref)
    assert res.in_circuit.sum() > 5
    assert res.n_forward_passes * 2 < ref["n_forward_passes"]


@pytest.mark.parametrize("tau", [-0.1, float("nan"), "big", None])
def test_bad_tau_is_a_one_line_user_error(models, acdc_task, tau):
    setup = _setup(models["gpt2"], acdc_task)
    with pytest.raises(UserError) as err:
        acdc(setup, tau)
    assert "\n" not in str(err.value) and "tau" in str(err.value)
    with pytest.raises(UserError):
        acdc(setup, taus=[0.1, tau])


def test_bad_candidates_and_empty_taus_are_user_errors(models, acdc_task):
    setup = _setup(models["gpt2"], acdc_task)
    with pytest.raises(UserError, match="candidates"):
        acdc(setup, 0.1, candidates=np.ones(3, bool))
    with pytest.raises(UserError, match="candidates"):
        acdc(setup, 0.1, candidates=np.ones(setup.graph.n_edges))
    with pytest.raises(UserError, match="at least one"):
        acdc(setup, taus=[])


def test_progress_goes_to_stderr(models, acdc_task, capsys):
    setup = _setup(models["gpt2"], acdc_task)
    acdc(setup, 0.01, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "acdc" in err


def test_bf16_model_runs(acdc_task):
    model = tiny.build("llama", seed=0).to(torch.bfloat16)
    res = acdc(_setup(wrap_model(model), acdc_task, "logit_diff"), 0.01)
    assert res.scores.dtype == np.float32 and np.isfinite(res.scores).all()
