"""The user's own metric: a function or a Metric in discover()/evaluate()/Setup, --metric FILE.py:NAME."""

import json

import numpy as np
import pytest
import torch

import tiny
from conftest import token_rows
from discovery import Metric, Setup, UserError, discover, evaluate, score_edges, task_from_rows, wrap_model
from discovery.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def my_logit_diff(logits, batch, clean_logits=None):
    """Written as a user would, from the documented contract (same ops as the built-in)."""
    logits = logits.float()
    right = (logits.gather(-1, batch.answers) * batch.answer_mask).sum(-1) / batch.answer_mask.sum(-1)
    wrong = (logits.gather(-1, batch.wrongs) * batch.wrong_mask).sum(-1) / batch.wrong_mask.sum(-1)
    return right - wrong


def indexed_logit_diff(logits, batch, clean_logits=None):
    """Another formulation: one answer and one wrong token per row, by indexing."""
    rows = torch.arange(logits.shape[0])
    return logits[rows, batch.answers[:, 0]] - logits[rows, batch.wrongs[:, 0]]


@pytest.fixture(scope="module")
def lm():
    return wrap_model(tiny.build("gpt2", seed=3))


@pytest.fixture(scope="module")
def task():
    return task_from_rows(token_rows(n=5, seed=1), vocab_size=tiny.VOCAB)


@pytest.mark.parametrize("method", ["eap", "eap-ig", "exact"])
def test_a_function_equal_to_the_logit_difference_gives_exactly_the_builtin_scores(lm, task, method):
    builtin = score_edges(Setup(lm, task, "logit_diff", batch_size=2), method, steps=2)
    mine = score_edges(Setup(lm, task, my_logit_diff, batch_size=2), method, steps=2)
    assert torch.equal(builtin, mine)
    assert builtin.abs().max() > 0
    other = score_edges(Setup(lm, task, indexed_logit_diff, batch_size=2), method, steps=2)
    torch.testing.assert_close(other, builtin, rtol=1e-5, atol=1e-5)


def test_discover_records_the_function_name_and_evaluate_needs_it_again(lm, task):
    ref = discover(lm, task, "eap", metric="logit_diff", top_n=20, curve=False)
    c = discover(lm, task, "eap", metric=my_logit_diff, top_n=20, curve=False)
    assert c.metrics.metric == "my_logit_diff" and c.method.params["metric"] == "my_logit_diff"
    assert c.method.params["metric_kind"] == "user" and c.method.params["higher_is_better"] is True
    assert "metric_kind" not in ref.method.params
    assert [e.score for e in c.edges] == [e.score for e in ref.edges]
    assert c.metrics.faithfulness == ref.metrics.faithfulness
    with pytest.raises(UserError, match="your own metric 'my_logit_diff'"):
        evaluate(lm, task, c)
    out = evaluate(lm, task, c, metric=my_logit_diff)
    assert out["metric"] == "my_logit_diff" and out["circuit"] == pytest.approx(c.metrics.circuit)
    named = discover(lm, task, "eap", metric=Metric("ld2", my_logit_diff, True), top_n=20, curve=False)
    assert named.metrics.metric == "ld2"


def test_lower_is_better_flips_the_signed_selection(lm, task):
    neg = lambda logits, batch, clean_logits=None: -my_logit_diff(logits, batch)  # noqa: E731
    up = discover(lm, task, "eap", metric=my_logit_diff, top_n=15, absolute=False, prune=False, curve=False)
    down = discover(lm, task, "eap", metric=neg, higher_is_better=False, top_n=15, absolute=False, prune=False,
                    curve=False)
    wrong_way = discover(lm, task, "eap", metric=neg, top_n=15, absolute=False, prune=False, curve=False)
    kept = lambda c: {e.name for e in c.edges if e.in_circuit}  # noqa: E731
    assert down.method.params["higher_is_better"] is False
    assert kept(up) == kept(down) and kept(up) != kept(wrong_way)
    assert down.metrics.faithfulness == pytest.approx(up.metrics.faithfulness)
    with pytest.raises(UserError, match="fixed direction|higher-is-better"):
        discover(lm, task, "eap", metric="logit_diff", higher_is_better=False)


@pytest.mark.parametrize("fn, match", [
    (lambda logits, batch, clean_logits=None: my_logit_diff(logits, batch).mean(), r"shape \[\] for a batch of 2"),
    (lambda logits, batch, clean_logits=None: logits[:, :2], r"shape \[2, 2\]"),
    (lambda logits, batch, clean_logits=None: 1.0, "returned float"),
    (lambda logits, batch, clean_logits=None: my_logit_diff(logits, batch).detach(), "without gradient"),
    (lambda logits, batch, clean_logits=None: logits[:, 0] / batch.nothing, "raised AttributeError"),
])
def test_bad_user_metrics_are_one_line_user_errors(lm, task, fn, match):
    with pytest.raises(UserError, match=match) as info:
        discover(lm, task, "eap", metric=fn, curve=False, batch_size=2)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, task):
    d = tmp_path_factory.mktemp("metric")
    tiny.build("llama").save_pretrained(d / "model")
    (d / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in token_rows(n=4, seed=2)))
    (d / "m.py").write_text(
        "import torch\n"
        "def ld(logits, batch, clean_logits=None):\n"
        "    r = torch.arange(logits.shape[0])\n"
        "    return logits[r, batch.answers[:, 0]] - logits[r, batch.wrongs[:, 0]]\n"
        "def mean_ld(logits, batch, clean_logits=None):\n"
        "    return ld(logits, batch).mean()\n"
        "NOT_A_FUNCTION = 3\n")
    (d / "broken.py").write_text("import nonexistent_module_xyz\n")
    return d


def _cli(capsys, *argv):
    code = main([str(a) for a in argv] + ["--quiet"])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_metric_from_a_file(capsys, cli_files):
    d = cli_files
    base = ["--model", d / "model", "--task", d / "task.jsonl", "--method", "eap", "--no-curve"]
    code, out, err = _cli(capsys, "discover", *base, "--metric", f"{d / 'm.py'}:ld", "--out", d / "c.json")
    assert code == 0, err
    c = json.loads((d / "c.json").read_text())
    assert c["metrics"]["metric"] == "ld" and c["method"]["params"]["metric_kind"] == "user"
    code, out, err = _cli(capsys, "discover", *base, "--out", d / "b.json")
    assert code == 0, err
    b = json.loads((d / "b.json").read_text())
    np.testing.assert_allclose([e["score"] for e in c["edges"]], [e["score"] for e in b["edges"]], atol=1e-5)
    code, out, err = _cli(capsys, "evaluate", "--model", d / "model", "--task", d / "task.jsonl", "--circuit",
                          d / "c.json", "--metric", f"{d / 'm.py'}:ld", "--json")
    assert code == 0, err
    assert json.loads(out)["circuit"] == pytest.approx(c["metrics"]["circuit"], abs=1e-5)


@pytest.mark.parametrize("spec, match", [
    ("nowhere.py:ld", "metric file 'nowhere.py' not found"),
    ("{d}/m.py:missing", "has no 'missing' (it defines ld, mean_ld)"),
    ("{d}/m.py:NOT_A_FUNCTION", "is a int, not a function"),
    ("{d}/m.py:mean_ld", "returned shape [] for a batch of 4"),
    ("{d}/broken.py:ld", "failed to import: ModuleNotFoundError"),
    ("logit_dif", "unknown metric 'logit_dif'"),
])
def test_cli_bad_metric_files_exit_2_with_one_line(capsys, cli_files, spec, match):
    d = cli_files
    code, out, err = _cli(capsys, "discover", "--model", d / "model", "--task", d / "task.jsonl", "--method", "eap",
                          "--no-curve", "--metric", spec.format(d=d), "--out", d / "x.json")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("circuitry: error: ") and match in lines[0], lines[0]


def test_cli_lower_is_better_is_for_user_metrics(capsys, cli_files):
    d = cli_files
    code, out, err = _cli(capsys, "discover", "--model", d / "model", "--task", d / "task.jsonl",
                          "--metric", "kl", "--lower-is-better", "--out", d / "x.json")
    assert code == 2 and "applies to your own metric" in err


def test_a_metric_from_a_file_runs_on_ray_workers(ray_local, lm, task, tmp_path):
    """The function is shipped to the workers by value (its file's module is not importable there)."""
    pytest.importorskip("ray")
    from discovery.pipeline.distributed import Workers
    from discovery.model.metrics import parse_metric

    (tmp_path / "remote_metric.py").write_text(
        "import torch\n"
        "def remote_ld(logits, batch, clean_logits=None):\n"
        "    r = torch.arange(logits.shape[0])\n"
        "    return logits[r, batch.answers[:, 0]] - logits[r, batch.wrongs[:, 0]]\n")
    fn = parse_metric(f"{tmp_path / 'remote_metric.py'}:remote_ld")
    setup = Setup(lm, task, fn, batch_size=2)
    with Workers(2, cpus=0.5) as workers:
        sharded = score_edges(setup, "eap", workers=workers)
    single = score_edges(setup, "eap")
    torch.testing.assert_close(sharded, single, rtol=1e-5, atol=1e-6 * float(single.abs().max()))
