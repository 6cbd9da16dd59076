"""`circuitry export GRAPH --format neuronpedia` for attribution graphs: the JSON circuit-tracer's
create_graph_files writes, checked against Neuronpedia's published graph schema and against the graph
file itself (every link a kept edge with its weight, node ids as circuit-tracer forms them).
benchmarks/ct_compare.py compares the same export with circuit-tracer's own file (docs/benchmarks.md)."""

import json
import re

import jsonschema

from discovery.cli import main
from discovery.features.graph_file import load_graph
from test_attribute_cli import PROMPT, tc_dir  # noqa: F401 (tc_dir: a fixture)
from test_export import SCHEMA


def _graph(tc_dir, tmp_path, *extra):  # noqa: F811
    path = tmp_path / "g.json"
    assert main(["attribute", "--model", "toy:ioi", "--transcoders", str(tc_dir), "--prompt", PROMPT,
                 "--out", str(path), "--quiet", "--check", "0", *extra]) == 0
    return path


def test_feature_graph_exports_as_neuronpedia_json(tc_dir, tmp_path, capsys):  # noqa: F811
    path = _graph(tc_dir, tmp_path)
    doc = load_graph(path)
    out = tmp_path / "np.json"
    assert main(["export", str(path), "--format", "neuronpedia", "--out", str(out), "--scan", "toy-ioi-clt"]) == 0
    assert "attribution graph of" in capsys.readouterr().out
    g = json.loads(out.read_text())
    jsonschema.validate(g, SCHEMA)
    meta = g["metadata"]
    assert meta["scan"] == "toy-ioi-clt" and meta["prompt_tokens"] == doc["token_strings"]
    assert meta["node_threshold"] == doc["settings"]["node_threshold"]
    n_layers = doc["model"]["n_layers"]
    by_id = {n["node_id"]: n for n in g["nodes"]}
    # circuit-tracer's error ids `0_{layer}_{pos}` can equal a layer-0 feature's `0_{feature}_{pos}`; kept as it
    # writes them, and counted
    assert len(g["nodes"]) - len(by_id) == meta["info"].get("id_collisions", 0)
    # node ids as circuit-tracer forms them, from the graph file's own nodes
    want: dict[str, set] = {}
    for n in doc["nodes"]:
        t = n["type"]
        if t == "feature":
            want.setdefault(f"{n['layer']}_{n['feature']}_{n['pos']}", set()).add("cross layer transcoder")
        elif t == "error":
            want.setdefault(f"0_{n['layer']}_{n['pos']}", set()).add("mlp reconstruction error")
        elif t == "embedding":
            want.setdefault(f"E_{n['token']}_{n['pos']}", set()).add("embedding")
        else:
            want.setdefault(f"{n_layers + 1}_{n['token']}_{n['pos']}", set()).add("logit")
    assert all(n["feature_type"] in want[n["node_id"]] for n in g["nodes"])
    assert {k for k, v in want.items() if v & {"embedding", "logit"}} <= set(by_id)
    assert all(re.fullmatch(r"(\d+|E)_-?\d+_\d+", k) for k in by_id)
    logits = [n for n in g["nodes"] if n["feature_type"] == "logit"]
    assert sum(n["is_target_logit"] for n in logits) == 1 and logits[0]["clerp"].startswith("Output ")
    # every link is one of the file's edges, with its weight
    ids = []
    for n in doc["nodes"]:
        ids.append({"feature": lambda n: f"{n['layer']}_{n['feature']}_{n['pos']}",
                    "error": lambda n: f"0_{n['layer']}_{n['pos']}",
                    "embedding": lambda n: f"E_{n['token']}_{n['pos']}",
                    "logit": lambda n: f"{n_layers + 1}_{n['token']}_{n['pos']}"}[n["type"]](n))
    edges = sorted((ids[s], ids[t], w) for s, t, w in zip(doc["edges"]["source"], doc["edges"]["target"],
                                                          doc["edges"]["weight"]))
    links = sorted((x["source"], x["target"], x["weight"]) for x in g["links"])
    assert len(links) == len(edges) > 0
    assert [x[:2] for x in links] == [x[:2] for x in edges]
    assert max(abs(a[2] - b[2]) for a, b in zip(links, edges)) <= 1e-6 * max(abs(b[2]) for b in edges)
    assert {x for link in links for x in link[:2]} <= set(by_id)


def test_feature_graph_export_errors_are_one_line(tc_dir, tmp_path, capsys):  # noqa: F811
    path = _graph(tc_dir, tmp_path, "--no-prune")
    capsys.readouterr()
    assert main(["export", str(path), "--format", "graphml", "--out", str(tmp_path / "x.graphml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--format neuronpedia" in err
