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
