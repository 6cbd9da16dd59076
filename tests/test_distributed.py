"""Ray workers: sharded runs equal the single-process run (scores within fp32 tolerance, ACDC edge sets
identical); a worker that dies is replaced, one that raises or keeps dying fails the run; a node
removed mid-run does not change the result.

Workers ask for half a CPU each so that two fit the 2-CPU local Ray of the `ray_local` fixture."""

import threading
import time

import numpy as np
import pytest
import torch

import tiny
from conftest import token_rows
from discovery import Setup, UserError, get_metric, score_edges, task_from_rows, wrap_model
from discovery.methods.acdc import acdc

ray = pytest.importorskip("ray")
from discovery.pipeline.distributed import Workers, WorkerError  # noqa: E402

# ACDC decisions closer than this to tau could go either way between differently summed runs (see
# tests/test_acdc.py); the thresholds used are this far from every decision.
MARGIN = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # the workers have one each; the driver likewise


@pytest.fixture(scope="module")
def workers(ray_local):
    with Workers(2, cpus=0.5) as w:
        yield w


@pytest.fixture(scope="module")
def lms():
    return {fam: wrap_model(tiny.build(fam, seed=3)) for fam in ("gpt2", "llama", "neox")}


@pytest.fixture(scope="module")
def task7():
    """Seven rows, batch 2: four data batches, sharded 2 + 2 batches = 4 + 3 rows (unequal shards, so
    an unweighted average of the shard means would be wrong)."""
    return task_from_rows(token_rows(n=7, length=6, seed=2, pos=3), vocab_size=tiny.VOCAB)


def _setup(lm, task, metric="logit_diff", **kw):
    return Setup(lm, task, get_metric(metric), batch_size=kw.pop("batch_size", 2), **kw)


def _assert_scores_close(sharded, single):
    assert sharded.dtype == single.dtype == torch.float32 and sharded.shape == single.shape
    scale = float(single.abs().max())
    assert scale > 1e-3  # not vacuous
    torch.testing.assert_close(sharded, single, rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.parametrize("family,method", [("gpt2", "eap"), ("gpt2", "eap-ig"), ("gpt2", "exact"),
                                           ("llama", "eap-ig"), ("neox", "eap"), ("neox", "exact")])
def test_sharded_scores_equal_single_process(workers, lms, task7, family, method):
    setup = _setup(lms[family], task7)
    _assert_scores_close(score_edges(setup, method, steps=3, workers=workers), score_edges(setup, method, steps=3))
    assert workers.shards(len(task7), 2) == [[0, 1, 2, 3], [4, 5, 6]]


def test_mean_ablation_uses_the_mean_over_every_row(workers, lms, task7):
    """With mean ablation the reference is the mean over the whole task, not over a worker's shard."""
    setup = _setup(lms["llama"], task7, intervention="mean")
    _assert_scores_close(score_edges(setup, "eap-ig", steps=2, workers=workers), score_edges(setup, "eap-ig", steps=2))


def _float_proof_taus(setup, taus, n, **kw):
    """The first n thresholds whose every measured decision (single-process run) is MARGIN from tau."""
    out = []
    for tau in taus:
        res = acdc(setup, tau, **kw)
        measured = ~np.isnan(res.scores) & (res.scores != 0)
        hurt = -res.scores[measured] if setup.metric.higher_is_better else res.scores[measured]
        if not measured.any() or np.min(np.abs(hurt - tau)) >= MARGIN:
            out.append((tau, res))
            if len(out) == n:
                return out
    raise AssertionError(f"fewer than {n} of {taus} are float-proof here")


def _assert_same_acdc(sharded, single):
    assert np.array_equal(sharded.in_circuit, single.in_circuit)
    np.testing.assert_allclose(sharded.scores, single.scores, rtol=0, atol=2e-6, equal_nan=True)
    assert sharded.n_edges_evaluated == single.n_edges_evaluated


@pytest.mark.parametrize("family,metric,taus", [("gpt2", "kl", [1e-4, 3e-4, 1e-3, 3e-3]),
                                                ("llama", "logit_diff", [1e-3, 3e-3, 1e-2, 3e-2])])
def test_sharded_acdc_decides_the_same_edges(workers, lms, task7, family, metric, taus):
    setup = _setup(lms[family], task7, metric)
    chosen = _float_proof_taus(setup, taus, 2)
    sharded = acdc(setup, taus=[t for t, _ in chosen], workers=workers)
    kept = 0
    for (tau, single), res in zip(chosen, sharded):
        assert res.tau == tau
        _assert_same_acdc(res, single)
        kept += int(res.in_circuit.sum())
    assert 0 < kept


def test_sharded_acdc_against_the_reference_with_candidates_and_mean_ablation(workers, lms, task7):
    """Independent of the fast implementation: tests/acdc_reference.py, one full forward per edge."""
    from acdc_reference import acdc_reference

    setup = _setup(lms["llama"], task7, "logit_diff", intervention="mean")
    g = setup.graph
    candidates = np.random.default_rng(1).random(g.n_edges) < 0.6
    candidates[g.edge_dst == g.n_readers - 1] = True
    [(tau, single)] = _float_proof_taus(setup, [3e-3, 1e-2, 3e-2], 1, candidates=candidates)
    ref = acdc_reference(setup, tau, candidates=candidates)
    res = acdc(setup, tau, candidates=candidates, workers=workers)
    assert np.array_equal(res.in_circuit, ref["in_circuit"]) and res.in_circuit.any()
    np.testing.assert_allclose(res.scores, ref["scores"], rtol=0, atol=2e-6, equal_nan=True)
    _assert_same_acdc(res, single)


def test_a_loaded_model_is_loaded_by_name_on_the_workers(workers):
    from discovery import load_model
    from discovery.pipeline.distributed import model_spec

    lm = load_model("toy:ioi", device="cpu")
    assert "load" in model_spec(lm, ray) and "weights" not in model_spec(lm, ray)
    task = task_from_rows(token_rows(n=5, length=6, vocab=lm.vocab_size, seed=4), vocab_size=lm.vocab_size)
    setup = _setup(lm, task)
    _assert_scores_close(score_edges(setup, "eap", workers=workers), score_edges(setup, "eap"))
    with torch.no_grad():  # changed after loading: the workers' copy from the files would differ
        lm.hf_model.lm_head.weight.mul_(1.5)
    with pytest.raises(WorkerError, match="differs from the driver's"):
        score_edges(_setup(lm, task), "eap", workers=workers)


def test_bad_worker_counts_are_user_errors(workers, lms, task7):
    for bad in (0, -1, 1.5, True):
        with pytest.raises(UserError, match="--workers"):
            Workers(bad)
    with pytest.raises(UserError, match="--worker-cpus"):
        Workers(2, cpus=-1)
    small = task_from_rows(token_rows(n=1, length=6), vocab_size=tiny.VOCAB)
    with pytest.raises(UserError, match="at most 1 workers"):
        score_edges(_setup(lms["gpt2"], small), "eap", workers=workers)
    with pytest.raises(UserError, match="at most 1 workers"):
        acdc(_setup(lms["gpt2"], small), 0.01, workers=workers)
    with pytest.raises(UserError, match="do not fit"):
        Workers(3, cpus=1).start()  # 3 CPUs asked of a 2-CPU Ray: an error, not a wait


def test_unreachable_ray_address_is_one_quick_line(monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process
    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("ray.init must not be reached"))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        Workers(2).start()
    assert time.perf_counter() - t0 < 10
    assert "127.0.0.1:1" in str(err.value) and "\n" not in str(err.value)


def test_discover_with_workers(workers, lms, task7):
    """discover(workers=...) passes them to ACDC and records their number. (An int starts workers for
    the call: the same path as Workers(n), whose start is exercised by the fixture.)"""
    from discovery import discover

    setup = _setup(lms["gpt2"], task7, "kl")
    [(tau, _)] = _float_proof_taus(setup, [1e-4, 3e-4, 1e-3], 1)
    kw = dict(method="acdc", tau=tau, batch_size=2, curve=False)
    sharded = discover(lms["gpt2"], task7, workers=workers, **kw)
    single = discover(lms["gpt2"], task7, **kw)
    assert sharded.method.params["workers"] == 2 and "workers" not in single.method.params
    assert [e.in_circuit for e in sharded.edges] == [e.in_circuit for e in single.edges]
    with pytest.raises(UserError, match="need workers N"):
        discover(lms["gpt2"], task7, "eap", worker_cpus=1)
    with pytest.raises(UserError, match="workers: must be at least 1"):
        discover(lms["gpt2"], task7, "eap", workers=0)


def test_progress_goes_to_stderr(workers, lms, task7, capsys):
    setup = _setup(lms["gpt2"], task7, progress=True)
    score_edges(setup, "eap", workers=workers)
    out, err = capsys.readouterr()
    assert out == "" and "eap x2" in err


# --- failures (these restart workers: kept after the equality tests) ---------------------------------


def test_a_worker_that_dies_mid_shard_is_replaced(workers, lms, task7):
    setup = _setup(lms["gpt2"], task7)
    single = score_edges(setup, "eap-ig", steps=2)
    before = workers.n_retried
    # the worker running shard 2 dies on its first attempt (after starting on it)
    workers._fault = lambda method, shard, attempt: {"sleep": 0.2, "exit": True} if shard == 1 and attempt == 0 else None
    try:
        sharded = score_edges(setup, "eap-ig", steps=2, workers=workers)
    finally:
        workers._fault = None
    assert workers.n_retried == before + 1
    _assert_scores_close(sharded, single)


def test_a_shard_whose_code_raises_fails_the_run_with_the_workers_error(workers, lms):
    rows = token_rows(n=4, length=6, seed=5)
    rows[3]["clean_ids"][1] = tiny.VOCAB + 50  # out of the embedding's range: the worker's model raises
    bad = task_from_rows(rows)  # no vocab_size: the driver cannot see it
    setup = _setup(lms["gpt2"], bad)
    t0 = time.perf_counter()
    with pytest.raises(WorkerError) as err:
        score_edges(setup, "eap", workers=workers)
    assert time.perf_counter() - t0 < 30
    assert "shard 2 of 2" in str(err.value) and "index out of range" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_shard_that_keeps_killing_its_worker_fails_the_run(workers, lms, task7):
    setup = _setup(lms["gpt2"], task7)
    workers.shard_retries = 1
    workers._fault = lambda method, shard, attempt: {"exit": True} if shard == 0 else None
    t0 = time.perf_counter()
    try:
        with pytest.raises(WorkerError, match="shard 1 of 2 lost its worker 2 times"):
            score_edges(setup, "eap", workers=workers)
    finally:
        workers._fault, workers.shard_retries = None, 3
    assert time.perf_counter() - t0 < 60


# --- a two-node cluster that loses a node (last: it replaces the shared local Ray) ------------------


def test_a_node_removed_mid_run_does_not_change_the_result(workers, lms, task7):
    from ray.cluster_utils import Cluster

    setup = _setup(lms["gpt2"], task7, "kl")
    [(tau, single)] = _float_proof_taus(setup, [1e-4, 3e-4, 1e-3], 1)
    eap_single = score_edges(_setup(lms["gpt2"], task7), "eap-ig", steps=2)
    workers.close()
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        second = cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        with Workers(2, cpus=1, restart_timeout=60) as w:
            on_second = [i for i, info in enumerate(w.info) if info["node"] == second.node_id]
            assert len(on_second) == 1  # one worker per node
            # shard i starts on worker i: the second node's shard stalls in its third round, so the
            # node goes while that call is in flight (the retry, attempt 1, does not stall)
            doomed, seen = on_second[0], []

            def fault(method, shard, attempt):
                if method == "acdc_sums" and shard == doomed and attempt == 0:
                    seen.append(1)
                    if len(seen) == 3:
                        return {"sleep": 30}
                return None

            w._fault = fault

            def remove_when_busy():
                deadline = time.monotonic() + 60
                while len(seen) < 3 and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.5)  # the stalled call has reached the worker
                cluster.remove_node(second, allow_graceful=False)

            remover = threading.Thread(target=remove_when_busy)
            remover.start()
            res = acdc(setup, tau, workers=w)
            remover.join()
            assert w.n_retried >= 1  # the node did go mid-run
            _assert_same_acdc(res, single)
            w._fault = None
            # and a later run on the surviving node alone
            _assert_scores_close(score_edges(_setup(lms["gpt2"], task7), "eap-ig", steps=2, workers=w), eap_single)
    finally:
        ray.shutdown()
        cluster.shutdown()
