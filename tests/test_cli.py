"""The command line end to end, and every bad input: exit code 2, one line, no traceback."""

import json
import subprocess
import sys

import pytest
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers
from transformers import BertConfig, PreTrainedTokenizerFast

import tiny
from conftest import token_rows
from discovery import SCHEMA_VERSION, Graph
from discovery.cli import main

NAMES = ["Mary", "John", "Alice", "Bob", "Carol", "Dave"]
WORDS = ["<pad>", "When", "and", "went", "to", "the", "store", ",", "gave", "a", "drink", "."] + NAMES
WORDS += [f"w{i}" for i in range(tiny.VOCAB - len(WORDS))]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    tiny.build("gpt2", n_layers=2).save_pretrained(d)
    tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bare_model_dir(tmp_path_factory):  # a model without a tokenizer
    d = tmp_path_factory.mktemp("bare")
    tiny.build("llama").save_pretrained(d)
    return d


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def text_rows(n=6):
    rows = []
    for i in range(n):
        io, s, other = NAMES[i % 6], NAMES[(i + 1) % 6], NAMES[(i + 2) % 6]
        rows.append({"clean": f"When {io} and {s} went to the store , {s} gave a drink to",
                     "corrupted": f"When {io} and {s} went to the store , {other} gave a drink to",
                     "answer": io, "wrong": s})
    return rows


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _user_error(capsys, *argv, match):
    code, out, err = _run(capsys, *argv, "--quiet")
    lines = [l for l in err.splitlines() if l.strip()]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("circuitry: error: ") and match in lines[0], lines[0]
    return lines[0]


def test_discover_then_evaluate(capsys, tmp_path, model_dir):
    task = _write(tmp_path / "ioi.jsonl", text_rows())
    out_file = tmp_path / "c.json"
    code, out, _ = _run(capsys, "discover", "--model", model_dir, "--task", task, "--method", "eap-ig",
                        "--top-n", "20", "--batch-size", "4", "--out", out_file, "--quiet")
    assert code == 0 and "eap-ig:" in out and str(out_file) in out
    data = json.loads(out_file.read_text())
    g = Graph(2, 4)
    assert data["schema_version"] == SCHEMA_VERSION and len(data["edges"]) == g.n_edges
    edge = data["edges"][0]
    assert set(edge) == {"name", "source", "target", "slot", "score", "in_circuit"}
    assert [e["name"] for e in data["edges"]] == g.edge_names
    kept = sum(e["in_circuit"] for e in data["edges"])
    assert 0 < kept <= 20 and data["metrics"]["n_edges"] == kept
    assert data["model"]["n_layers"] == 2 and data["task"]["rows"] == 6 and len(data["task"]["content_hash"]) == 64
    assert data["method"] == {"name": "eap-ig", "params": {"metric": "logit_diff", "intervention": "patching",
                                                          "batch_size": 4, "steps": 5, "qk_fix": True}}
    assert len(data["metrics"]["curve_signed"]) == 10 and data["wall_time_s"] > 0 and data["peak_memory_bytes"] > 0

    code, out, _ = _run(capsys, "evaluate", "--model", model_dir, "--task", task, "--circuit", out_file,
                        "--json", "--quiet")
    result = json.loads(out)
    assert code == 0 and {"clean", "corrupted", "circuit", "faithfulness"} <= set(result)
    assert result["circuit"] == pytest.approx(data["metrics"]["circuit"], abs=1e-6)
    assert result["faithfulness"] == pytest.approx(data["metrics"]["faithfulness"], abs=1e-6)

    # evaluate uses exactly the edges marked in_circuit: all of them is the full model
    for e in data["edges"]:
        e["in_circuit"] = True
    (tmp_path / "all.json").write_text(json.dumps(data))
    code, out, _ = _run(capsys, "evaluate", "--model", model_dir, "--task", task, "--circuit", tmp_path / "all.json",
                        "--json", "--quiet")
    result = json.loads(out)
    assert result["circuit"] == pytest.approx(result["clean"], abs=1e-6) and result["faithfulness"] == pytest.approx(1.0)


def test_token_rows_and_other_methods(capsys, tmp_path, bare_model_dir):
    task = _write(tmp_path / "t.jsonl", token_rows(n=4))
    for method in ("eap", "exact", "clean-corrupted", "eap-ig-activations"):
        code, out, err = _run(capsys, "discover", "--model", bare_model_dir, "--task", task, "--method", method,
                              "--greedy", "10", "--metric", "kl", "--no-curve", "--out", tmp_path / "c.json", "--quiet")
        assert code == 0, err
        data = json.loads((tmp_path / "c.json").read_text())
        assert data["method"]["name"] == method and data["selection"]["kind"] == "greedy"


def test_bad_task_inputs(capsys, tmp_path, model_dir, bare_model_dir):
    base = ["discover", "--model", model_dir, "--out", tmp_path / "o.json", "--task"]
    _user_error(capsys, *base, _write(tmp_path / "empty.jsonl", []), match="has no rows")
    rows = text_rows(3)
    del rows[1]["wrong"]
    _user_error(capsys, *base, _write(tmp_path / "missing.jsonl", rows), match="row 2: field 'wrong'")
    rows = text_rows(3)
    rows[2]["answer"] = "Mary John"
    _user_error(capsys, *base, _write(tmp_path / "multi.jsonl", rows), match="row 3: field 'answer'")
    rows = token_rows(3)
    rows[0]["clean_ids"][1] = 5000
    _user_error(capsys, "discover", "--model", bare_model_dir, "--out", tmp_path / "o.json", "--task",
                _write(tmp_path / "vocab.jsonl", rows), match="row 1: field 'clean_ids': id 5000")
    _user_error(capsys, "discover", "--model", bare_model_dir, "--out", tmp_path / "o.json", "--task",
                _write(tmp_path / "text.jsonl", text_rows(2)), match="need a tokenizer")
    rows = text_rows(3)
    rows[1]["corrupted"] += " ."
    _user_error(capsys, *base, _write(tmp_path / "len.jsonl", rows), match="row 2: clean has")
    _user_error(capsys, *base, _write(tmp_path / "json.jsonl", [json.dumps(text_rows(1)[0]), "{oops"]),
                match="row 2")
    _user_error(capsys, *base, tmp_path / "nope.jsonl", match="not found")


def test_bad_model_and_arguments(capsys, tmp_path, model_dir):
    task = _write(tmp_path / "ioi.jsonl", text_rows(2))
    _user_error(capsys, "discover", "--model", tmp_path / "absent", "--task", task, "--out", "o", match="does not exist")
    bert = tmp_path / "bert"
    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=8).save_pretrained(bert)
    _user_error(capsys, "discover", "--model", bert, "--task", task, "--out", "o", match="not supported; supported:")
    _user_error(capsys, "discover", "--model", model_dir, "--task", task, "--out", "o", "--top-n", "3",
                "--threshold", "1", match="not allowed with")
    _user_error(capsys, "discover", "--model", model_dir, "--task", task, "--out", "o", "--batch-size", "0",
                match="--batch-size: must be at least 1")
    _user_error(capsys, "discover", "--model", model_dir, "--task", task, "--out", "o", "--method", "eap-ig",
                "--steps", "0", match="--steps")
    _user_error(capsys, "evaluate", "--model", model_dir, "--task", task, match="required: --circuit")
    (tmp_path / "bad.json").write_text("{nope")
    _user_error(capsys, "evaluate", "--model", model_dir, "--task", task, "--circuit", tmp_path / "bad.json",
                match="not valid JSON")


def test_circuit_for_another_model_shape_is_refused(capsys, tmp_path, model_dir, bare_model_dir):
    task = _write(tmp_path / "t.jsonl", token_rows(n=2))
    _run(capsys, "discover", "--model", model_dir, "--task", task, "--method", "eap", "--no-curve",
         "--out", tmp_path / "c.json", "--quiet")
    _user_error(capsys, "evaluate", "--model", bare_model_dir, "--task", task, "--circuit", tmp_path / "c.json",
                match="same shape")


def test_console_entry_point_exit_code():
    proc = subprocess.run([sys.executable, "-m", "discovery.cli", "discover", "--model", "/nonexistent/x",
                           "--task", "/nonexistent/t.jsonl", "--out", "o"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "not found" in proc.stderr


def test_light_names_match_the_heavy_tables():
    """The CLI checks names from discovery/core/names.py without importing torch; they must be the real tables'."""
    from discovery.methods import METHODS
    from discovery.model.metrics import METRICS
    from discovery.methods.common import INTERVENTIONS
    from discovery.core.names import INTERVENTIONS as LIGHT_INTERVENTIONS, METHOD_NAMES, METRIC_NAMES, TASK_NAMES
    from discovery.task_library import TASKS

    assert tuple(METHODS) == METHOD_NAMES
    assert tuple(METRICS) == METRIC_NAMES
    assert tuple(INTERVENTIONS) == LIGHT_INTERVENTIONS
    assert tuple(TASKS) == TASK_NAMES
    from discovery.core.names import AUTO_METHOD
    from discovery.pipeline.options import DEFAULT_METHOD
    assert DEFAULT_METHOD == AUTO_METHOD  # what --help names as the default


HEAVY = ("torch", "transformers", "ray", "fastapi", "sklearn", "sqlalchemy")
PROBE = """
import sys
from discovery.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help
    code = exc.code
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print("EXIT", code, "HEAVY", ",".join(heavy) or "-")
"""


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["discover", "--help"],
    ["discover", "--model", "./no-such-model", "--task", "ioi", "--out", "x.json"],
    ["discover", "--model", "toy:nope", "--task", "ioi", "--out", "x.json"],
    ["discover", "--model", "toy:ioi", "--task", "no-such.jsonl", "--out", "x.json"],
    ["discover", "--model", "toy:ioi", "--task", "ioi", "--method", "bogus", "--out", "x.json"],
    ["evaluate", "--model", "toy:ioi", "--task", "ioi", "--circuit", "no-such.json"],
    ["discover", "--model", "toy:ioi", "--task", "ioi", "--metric", "bogus", "--out", "x.json"],
    ["discover", "--model", "toy:ioi", "--task", "ioi", "--metric", "no-such.py:m", "--out", "x.json"],
    ["label", "no-such.json", "--out", "x.json"],
    ["view", "no-such.json", "--out", "x.html"],
    ["diff", "a.json", "b.json"],
    ["timeline", "a.json"],
    ["tasks", "show", "nope"],
])
def test_help_and_argument_errors_import_nothing_heavy(argv, tmp_path):
    """--help and every argument/path error answer before torch, transformers, ray, fastapi load (what
    makes them fast: benchmarks/cli_latency.py times them)."""
    r = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv], capture_output=True, text=True,
                       cwd=tmp_path)
    last = r.stdout.strip().splitlines()[-1]
    if argv[-1] == "--help":
        assert last == "EXIT 0 HEAVY -" and "usage: circuitry" in r.stdout, (last, r.stderr)
        light = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY + ("pydantic",)), *argv],
                               capture_output=True, text=True, cwd=tmp_path)
        assert light.stdout.strip().splitlines()[-1] == "EXIT 0 HEAVY -", light.stdout[-300:]  # not even pydantic
        return
    assert last == "EXIT 2 HEAVY -", (last, r.stderr)
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("circuitry: error: "), r.stderr
