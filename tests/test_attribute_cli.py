"""`circuitry attribute` end to end on toy:ioi with random transcoders saved in circuit-tracer's format,
the graph file's checks, and the intervention check's definitions against a direct recomputation."""

import json

import pytest
import torch

from discovery.cli import main
from discovery.features.graph_file import load_graph
from discovery.features.transcoders import Transcoders, save_transcoders
from discovery.core.errors import UserError

PROMPT = "When Mary and John went to the store, John gave a drink to"


@pytest.fixture(scope="module")
def tc_dir(tmp_path_factory):
    L, d, F = 4, 64, 96
    g = torch.Generator().manual_seed(0)
    tc = Transcoders(torch.randn(L, F, d, generator=g) / d**0.5, torch.randn(L, F, generator=g) * 0.3 - 0.4,
                     [torch.randn(F, L - l, d, generator=g) * 0.1 for l in range(L)], torch.zeros(L, d),
                     W_skip=torch.randn(L, d, d, generator=g) * 0.02, threshold=torch.rand(L, F, generator=g) * 0.2,
                     activation="jumprelu", cross_layer=True)
    return save_transcoders(tc, tmp_path_factory.mktemp("tc") / "clt", model_name="toy:ioi")


def test_attribute_writes_a_checked_graph(tc_dir, tmp_path, capsys):
    out = tmp_path / "g.json"
    assert main(["attribute", "--model", "toy:ioi", "--transcoders", str(tc_dir), "--prompt", PROMPT,
                 "--out", str(out), "--quiet", "--check", "6"]) == 0
    doc = load_graph(out)
    assert doc["schema_version"] == 1 and doc["settings"]["pruned"]
    assert doc["tokens"][0] == 0 or doc["token_strings"][0] != ""  # BOS (or the first special token) prepended
    types = {n["type"] for n in doc["nodes"]}
    assert types == {"feature", "error", "embedding", "logit"}
    assert sum(n["type"] == "embedding" for n in doc["nodes"]) == len(doc["tokens"])
    assert doc["nodes"][-1]["text"] == " Mary" or doc["nodes"][-1]["type"] == "logit"
    check = doc["intervention"]
    assert len(check["features"]) == 6 and check["correlation"] is not None
    circuit = check["circuit"]
    # with every feature kept, the replacement model is the model itself
    assert abs(circuit["replacement_all"] - circuit["target_logit"]) < 1e-3 * max(1, abs(circuit["target_logit"]))
    assert "intervention check r =" in capsys.readouterr().out
    full = tmp_path / "full.json"
    assert main(["attribute", "--model", "toy:ioi", "--transcoders", str(tc_dir), "--prompt-ids", "[0, 5, 9, 12]",
                 "--out", str(full), "--quiet", "--no-prune", "--check", "0"]) == 0
    doc = load_graph(full)
    n_feat = sum(n["type"] == "feature" for n in doc["nodes"])
    assert doc["scores"]["n_active_features"] == n_feat and "intervention" not in doc
    assert doc["tokens"] == [0, 5, 9, 12]


@pytest.mark.parametrize("args,msg", [
    (["--prompt-ids", "1,x"], "--prompt-ids"),
    (["--prompt", PROMPT, "--node-threshold", "2"], "--node-threshold"),
    (["--prompt-ids", "1,99999"], "outside the model's vocabulary"),
])
def test_attribute_bad_input_is_one_line(tc_dir, tmp_path, capsys, args, msg):
    code = main(["attribute", "--model", "toy:ioi", "--transcoders", str(tc_dir), "--out", str(tmp_path / "g.json"),
                 "--quiet", "--check", "0", *args])
    err = capsys.readouterr().err
    assert code == 2 and msg in err and len(err.strip().splitlines()) == 1


def test_graph_file_refuses_other_files(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps({"schema_version": 1, "edges": []}))
    with pytest.raises(UserError, match="not an attribution graph file"):
        load_graph(bad)
    bad.write_text(json.dumps({"schema_version": 1, "kind": "feature_graph", "nodes": [{}],
                               "edges": {"source": [0], "target": [3], "weight": [1.0]}}))
    with pytest.raises(UserError, match="edges.target holds 3"):
        load_graph(bad)


def test_no_prune_keeps_every_node_and_edge_of_the_python_graph(tc_dir, tmp_path):
    """--no-prune: the file holds every node of attribute()'s graph and exactly its nonzero edges, with
    their weights (the adjacency computed here through the Python API, transposed to source -> target)."""
    from discovery.features.attribution import attribute
    from discovery.features.transcoders import load_transcoders
    from discovery.model.adapters import load_model

    ids = [0, 7, 3, 11, 9, 14]
    out = tmp_path / "full.json"
    assert main(["attribute", "--model", "toy:ioi", "--transcoders", str(tc_dir), "--prompt-ids", ",".join(map(str, ids)),
                 "--out", str(out), "--quiet", "--no-prune", "--check", "0", "--batch-size", "7"]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == 1 and doc["kind"] == "feature_graph" and not doc["settings"]["pruned"]
    model = load_model("toy:ioi")
    g = attribute(model, load_transcoders(str(tc_dir), model=model), prompt_ids=ids)
    assert len(doc["nodes"]) == g.n_nodes
    A = g.adjacency  # targets (features, then logits) x sources
    targets = list(range(g.n_features)) + list(range(g.n_sources, g.n_nodes))
    want = {(int(s), targets[int(t)]): float(A[t, s]) for t, s in zip(*A.nonzero(as_tuple=True))}
    got = {(s, t): w for s, t, w in zip(doc["edges"]["source"], doc["edges"]["target"], doc["edges"]["weight"])}
    assert got.keys() == want.keys() and len(want) > 0
    assert max(abs(got[k] - want[k]) for k in want) <= 1e-5 * max(abs(w) for w in want.values())


def test_progress_over_backward_batches_on_stderr(tc_dir, tmp_path, capsys, monkeypatch):
    """Without --quiet, the bar counts target rows (logits, then every active feature) on stderr,
    batch by batch, up to the total; stdout holds the one summary line."""
    monkeypatch.setenv("CIRCUITRY_PROGRESS", "plain")
    out = tmp_path / "g.json"
    assert main(["attribute", "--model", "toy:ioi", "--transcoders", str(tc_dir), "--prompt", PROMPT, "--out", str(out),
                 "--check", "0", "--batch-size", "16"]) == 0
    cap = capsys.readouterr()
    doc = load_graph(out)
    total = doc["scores"]["n_active_features"] + sum(n["type"] == "logit" for n in doc["nodes"])
    lines = [line for line in cap.err.splitlines() if line.startswith("attribution")]
    # plain lines come at most every 2 s (core/progress.py), so a fast run may print the last one only;
    # the per-batch calls themselves are counted in test_attribution's memory-budget test
    assert total > 32 and lines and f"{total}/{total}" in lines[-1]
    assert cap.out.count("\n") == 1 and "graph:" in cap.out


def test_wrong_transcoders_are_one_line_errors(tc_dir, tmp_path, capsys):
    """A missing folder, and a folder whose tensors do not fit the model (d_model 32, not 64): exit 2,
    one line naming the folder, or the file and the tensor."""
    small = save_transcoders(Transcoders(torch.randn(4, 8, 32), torch.zeros(4, 8), [torch.randn(8, 32) for _ in range(4)],
                                         torch.zeros(4, 32)), tmp_path / "small", model_name="other")
    for folder, msg in ((tmp_path / "nowhere", "does not exist"), (small, "tensor W_enc has shape [8, 32]")):
        code = main(["attribute", "--model", "toy:ioi", "--transcoders", str(folder), "--prompt", PROMPT,
                     "--out", str(tmp_path / "g.json"), "--quiet", "--check", "0"])
        err = capsys.readouterr().err
        assert code == 2 and msg in err and str(folder) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "g.json").exists()
