"""The default pipeline (discovery/pipeline/auto.py) and the faithfulness-target selection, on the trained toy
models whose mechanisms are known; the result warnings (discovery/pipeline/sanity.py)."""

import json
import warnings

import numpy as np
import pytest
import torch

import tiny
from discovery import Setup, discover, evaluate, get_metric, load_model, score_edges, task_from_rows, wrap_model
from discovery.pipeline import auto as auto_module
from discovery.pipeline.evaluation import evaluate_circuit
from discovery.methods.exact import exact
from discovery.model.adapters import toy_model_dir
from discovery.pipeline.sanity import ResultWarning, behaviour
from discovery.pipeline.selection import prune, top_n
from discovery.task_library import build_task

pytestmark = pytest.mark.usefixtures("one_thread")

TRAINED = [("toy:induction", "induction"), ("toy:ioi", "ioi")]
try:  # the Llama-GQA induction model with MLPs (python -m discovery.toy.train llama-induction)
    toy_model_dir("toy:llama-induction")
    TRAINED.append(("toy:llama-induction", "induction"))
except Exception:  # noqa: BLE001 - not shipped in this checkout
    pass


@pytest.fixture(scope="module")
def trained():
    out = {}
    for name, task_name in TRAINED:
        lm = load_model(name, device="cpu")
        out[name] = (lm, build_task(task_name, lm.tokenizer, lm.vocab_size, n=16, seed=1000),
                     build_task(task_name, lm.tokenizer, lm.vocab_size, n=16, seed=2000))
    return out


@pytest.mark.parametrize("name", [n for n, _ in TRAINED])
def test_the_default_returns_a_small_faithful_circuit_on_trained_models(trained, name):
    lm, task, heldout = trained[name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResultWarning)  # these models do their tasks: no warning
        c = discover(lm, task, curve=False)
    n_edges = len(c.edges)
    assert c.method.name == "auto" and c.selection.kind == "faithfulness" and c.selection.value == 0.9
    assert c.method.params["scorer"] == "eap-ig" and c.method.params["qk_fix"] is True
    assert c.metrics.n_edges <= 0.4 * n_edges
    assert c.metrics.faithfulness >= 0.9
    assert c.warnings == []
    # the reported faithfulness is the circuit's own, and it holds on rows the search never saw
    setup = Setup(lm, task, get_metric(task.metric))
    assert evaluate_circuit(setup, c.in_circuit(setup.graph))["faithfulness"] == pytest.approx(c.metrics.faithfulness)
    assert evaluate(lm, heldout, c)["faithfulness"] >= 0.85


@pytest.mark.parametrize("name", [n for n, _ in TRAINED])
def test_eap_ig_with_the_fix_top_40_percent_is_faithful(trained, name):
    lm, task, _ = trained[name]
    setup = Setup(lm, task, get_metric(task.metric))
    scores = score_edges(setup, "eap-ig", steps=5, qk_fix=True).numpy()
    keep = prune(setup.graph, top_n(setup.graph, scores, int(0.4 * setup.graph.n_edges)))
    assert evaluate_circuit(setup, keep)["faithfulness"] >= 0.9


def test_the_target_selection_keeps_the_smallest_evaluated_size_that_meets_it(trained):
    lm, task, _ = trained["toy:induction"]
    setup = Setup(lm, task, get_metric("logit_diff"))
    scores = score_edges(setup, "eap-ig", steps=5, qk_fix=True).numpy()
    keep, info = auto_module.smallest_faithful(setup, scores, 0.95)
    assert info["met"] and abs(1 - info["faithfulness"]) <= 0.05
    smaller = [p for p in info["evaluated"] if p["k"] < info["k"]]
    assert smaller and all(abs(1 - p["faithfulness"]) > 0.05 for p in smaller)
    assert evaluate_circuit(setup, keep)["faithfulness"] == pytest.approx(info["faithfulness"])
    # sizes are fractions of the graph: never more than the graph, and not the whole graph here
    assert all(p["k"] <= setup.graph.n_edges for p in info["evaluated"]) and keep.sum() < setup.graph.n_edges


def test_scoring_methods_select_by_the_target_by_default_not_an_absolute_count(trained):
    lm, task, _ = trained["toy:induction"]
    c = discover(lm, task, "eap", curve=False)
    assert c.selection.kind == "faithfulness" and c.method.params["qk_fix"] is True
    assert 0.9 <= c.metrics.faithfulness <= 1.1 and c.metrics.n_edges < len(c.edges)
    top = discover(lm, task, "eap", top_n=20, curve=False, qk_fix=False)
    assert top.selection.kind == "top-n" and top.method.params["qk_fix"] is False
    # measured to hurt more than help for clean-corrupted: there on request only
    assert discover(lm, task, "clean-corrupted", top_n=20, curve=False).method.params["qk_fix"] is False
    assert discover(lm, task, "clean-corrupted", top_n=20, curve=False, qk_fix=True).method.params["qk_fix"] is True


def test_verification_ranks_measured_effects_first(trained, monkeypatch):
    """When the gradient ranking needs too many edges, the top candidates are measured exactly."""
    lm, task, _ = trained["toy:induction"]
    setup = Setup(lm, task, get_metric("logit_diff"))
    monkeypatch.setattr(auto_module, "MAX_FRACTION", 0.05)
    scores, keep, params = auto_module.auto(setup)
    n = params["verified"]
    assert n >= int(np.ceil(0.05 * setup.graph.n_edges)) and "verified_search" in params
    ig = score_edges(setup, "eap-ig", steps=5, qk_fix=True).numpy()
    top = np.argsort(-np.abs(ig), kind="stable")[:n]
    if params["used_verified"]:
        np.testing.assert_allclose(scores[top], exact(setup, edges=top).numpy()[top], rtol=1e-5, atol=1e-6)
        rest = np.setdiff1d(np.arange(len(scores)), top)
        assert np.abs(scores[rest]).max() < np.abs(scores[top]).min()


def _swap(rows):
    return [dict(r, answer_id=r["wrong_id"], wrong_id=r["answer_id"]) for r in rows]


def _rows(n=6, seed=0):
    from conftest import token_rows
    return token_rows(n=n, seed=seed)


def test_behaviour_is_the_plain_models_clean_minus_corrupted_metric(models):
    from conftest import token_rows
    from discovery.model.tasks import divergence_order

    lm = models["gpt2"]
    rows = [r for pos in (4, 1, 3) for r in token_rows(n=2, seed=pos, pos=pos)]  # corrupted at 4, 4, 1, 1, 3, 3
    task = task_from_rows(rows, vocab_size=tiny.VOCAB)
    assert divergence_order(task) == [2, 3, 4, 5, 0, 1]  # batched by where the prompts first differ
    setup = Setup(lm, task, get_metric("logit_diff"), batch_size=4)
    assert [b.rows for b in setup.batches()] == [[2, 3, 4, 5], [0, 1]]
    want = []
    with torch.no_grad():  # the Hugging Face model itself, one row at a time (no padding)
        for r in rows:
            diffs = []
            for key in ("clean_ids", "corrupted_ids"):
                logits = lm.hf_model(input_ids=torch.tensor([r[key]])).logits[0, -1]
                diffs.append(float(logits[r["answer_id"]] - logits[r["wrong_id"]]))
            want.append(diffs[0] - diffs[1])
    np.testing.assert_allclose(behaviour(setup), want, atol=1e-4)


def test_a_model_that_does_not_do_the_task_gets_a_warning(models):
    lm = models["gpt2"]
    rows = _rows()
    setup = Setup(lm, task_from_rows(rows, vocab_size=tiny.VOCAB), get_metric("logit_diff"))
    b = behaviour(setup)
    rows = [r if bi < 0 else _swap([r])[0] for r, bi in zip(rows, b)]  # every row: clean worse than corrupted
    task = task_from_rows(rows, vocab_size=tiny.VOCAB)
    with pytest.warns(ResultWarning, match="no behaviour"):
        c = discover(lm, task, "eap", top_n=5, prune=False, curve=False)  # not empty: one warning
    assert len(c.warnings) == 1 and c.warnings[0].startswith("no behaviour")
    assert json.loads(c.model_dump_json())["warnings"] == c.warnings  # in the circuit JSON
    with pytest.warns(ResultWarning, match="no behaviour"):
        assert evaluate(lm, task, c)["warnings"] == c.warnings


def test_a_behaviour_within_noise_gets_a_warning(models):
    lm = models["gpt2"]
    rows = _rows(8)
    setup = Setup(lm, task_from_rows(rows, vocab_size=tiny.VOCAB), get_metric("logit_diff"))
    b = behaviour(setup)
    i = int(np.argmin(np.where(b > 0, b, np.inf)))  # the smallest positive behaviour
    both = rows + _swap(rows) + [rows[i]]  # each row and its mirror cancel; one small one is left
    with pytest.warns(ResultWarning, match="within noise"):
        c = discover(lm, task_from_rows(both, vocab_size=tiny.VOCAB), "eap", top_n=5, curve=False)
    assert c.warnings[0].startswith("behaviour within noise")


def test_discover_default_from_the_cli(tmp_path, capsys):
    from discovery.cli import main
    out = tmp_path / "c.json"
    assert main(["discover", "--model", "toy:induction", "--task", "induction", "--n", "8", "--out", str(out),
                 "--quiet", "--no-curve", "--no-qk-fix"]) == 0
    c = json.loads(out.read_text())
    assert c["method"]["name"] == "auto" and c["method"]["params"]["qk_fix"] is False and c["warnings"] == []
    assert main(["discover", "--model", "toy:induction", "--task", "induction", "--out", str(out), "--target", "1.5"]) == 2
    assert "--target: must be less than 1" in capsys.readouterr().err
    assert main(["discover", "--model", "toy:induction", "--task", "induction", "--out", str(out), "--top-n", "3"]) == 2
    assert "auto selects by a faithfulness target" in capsys.readouterr().err


def test_the_cli_prints_result_warnings_on_stderr(tmp_path, capsys):
    """toy:induction on its task with answer and wrong swapped: the model does the opposite."""
    from discovery.cli import main
    lm = load_model("toy:induction", device="cpu")
    t = build_task("induction", lm.tokenizer, lm.vocab_size, n=6, seed=0)
    path = tmp_path / "swapped.jsonl"
    path.write_text("".join(json.dumps({"clean_ids": c, "corrupted_ids": k, "answer_id": w[0], "wrong_id": a[0]}) + "\n"
                            for c, k, a, w in zip(t.clean_ids, t.corrupted_ids, t.answer_ids, t.wrong_ids)))
    out = tmp_path / "c.json"
    capsys.readouterr()
    assert main(["discover", "--model", "toy:induction", "--task", str(path), "--out", str(out), "--quiet",
                 "--no-curve", "--method", "eap", "--top-n", "10"]) == 0
    err = capsys.readouterr().err
    assert "circuitry: warning: no behaviour" in err
    assert json.loads(out.read_text())["warnings"][0].startswith("no behaviour")
    assert main(["evaluate", "--model", "toy:induction", "--task", str(path), "--circuit", str(out), "--quiet"]) == 0
    assert "circuitry: warning: no behaviour" in capsys.readouterr().err


def test_max_verify_caps_the_verification_and_an_estimate_comes_first(trained, monkeypatch, capsys):
    """max_verify caps step 3; the estimate of its time is written before the rest of it runs; 0 skips it."""
    lm, task, _ = trained["toy:induction"]
    setup = Setup(lm, task, get_metric("logit_diff"), progress=True)
    monkeypatch.setattr(auto_module, "MAX_FRACTION", 0.05)
    scores, _, params = auto_module.auto(setup, max_verify=12)
    err = capsys.readouterr().err
    assert params["verified"] == 12 and params["verify_estimate_s"] > 0
    assert "verifying 12 edges by exact patching, about" in err
    ig = score_edges(setup, "eap-ig", steps=5, qk_fix=True).numpy()
    top = np.argsort(-np.abs(ig), kind="stable")[:12]
    if params["used_verified"]:  # the probe's edges and the rest's, measured in two calls, are each edge's own effect
        np.testing.assert_allclose(scores[top], exact(setup, edges=top).numpy()[top], rtol=1e-5, atol=1e-6)
    _, _, params0 = auto_module.auto(setup, max_verify=0)
    assert params0["verified"] == 0 and "verify_estimate_s" not in params0


def test_max_verify_is_an_option_of_auto_only(tmp_path, capsys):
    from discovery.cli import main
    out = tmp_path / "c.json"
    assert main(["discover", "--model", "toy:induction", "--task", "induction", "--out", str(out), "--method", "eap",
                 "--max-verify", "5"]) == 2
    assert "max_verify applies to auto" in capsys.readouterr().err
    assert main(["discover", "--model", "toy:induction", "--task", "induction", "--out", str(out),
                 "--max-verify", "-1"]) == 2
    assert "--max-verify" in capsys.readouterr().err


def test_progress_callback_in_the_python_api(trained):
    """discover(progress=callable) gets (done, total, desc) for every pass, each ending at its total:
    EAP-IG once per (batch, interpolation step), the target search naming the sizes it evaluates."""
    lm, task, _ = trained["toy:induction"]
    calls = []
    discover(lm, task, "eap-ig", steps=3, curve=False, batch_size=8,
             progress=lambda done, total, desc: calls.append((done, total, desc)))
    ig = [(d, t) for d, t, x in calls if x == "eap-ig"]
    assert ig == [(i, 6) for i in range(7)]  # 2 batches x 3 steps, then the end
    search = {x for _, _, x in calls if x and x.startswith("target search: ")}
    assert search and all(x.endswith(f"of {Setup(lm, task, 'logit_diff').graph.n_edges} edges") for x in search)
    for desc in {x for _, _, x in calls}:
        seen = [(d, t) for d, t, x in calls if x == desc]
        assert seen[-1][0] == seen[-1][1]


def test_default_verification_fits_in_a_budget_tied_to_the_scoring_time(trained, monkeypatch):
    """By default step 3 is cut to the edges that fit in VERIFY_BUDGET x EAP-IG's own time (the
    probe's edges always run); an explicit max_verify is not cut."""
    lm, task, _ = trained["toy:induction"]
    setup = Setup(lm, task, get_metric("logit_diff"))
    monkeypatch.setattr(auto_module, "MAX_FRACTION", 0.05)
    monkeypatch.setattr(auto_module, "VERIFY_BUDGET", 1e9)
    _, _, wide = auto_module.auto(setup)
    planned = wide["verified"]
    assert planned > auto_module.PROBE and wide["score_s"] > 0 and wide["verify_budget_s"] > 0
    monkeypatch.setattr(auto_module, "VERIFY_BUDGET", 0.0)
    _, _, tight = auto_module.auto(setup)
    assert tight["verified"] == auto_module.PROBE and tight["verify_budget_s"] == 0
    _, _, explicit = auto_module.auto(setup, max_verify=planned)
    assert explicit["verified"] == planned and "verify_budget_s" not in explicit
