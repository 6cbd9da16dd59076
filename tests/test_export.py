"""Exports read back by the target tools' own readers (networkx) or by checks written from their
published formats (EAP-IG's graph.py for MIB: tests/eap_ig_reference.py; Neuronpedia's graph schema:
tests/data/), and MIB graphs imported into `circuitry evaluate` / `view`."""

import json
import re
from pathlib import Path

import jsonschema
import networkx as nx
import numpy as np
import pytest
import torch

import tiny
from conftest import token_rows
from discovery.core.circuit import Circuit, build_edges, build_nodes
from discovery.cli import main
from discovery.io.export import export
from discovery.io.export.mib_submission import PERCENTAGES
from discovery.core.graph import Graph
from eap_ig_reference import RefGraph

pytestmark = pytest.mark.usefixtures("one_thread")
SCHEMA = json.loads((Path(__file__).parent / "data" / "neuronpedia_graph_schema.json").read_text())


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny GPT-2 and a tiny grouped-query Llama (4 query heads over 2 k/v heads), one task, and an
    EAP circuit of each, labeled by hand for the GPT-2 one."""
    d = tmp_path_factory.mktemp("export")
    (d / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in token_rows(n=8)))
    for fam in ("gpt2", "llama", "neox"):  # neox: parallel attention and MLP
        tiny.build(fam, n_layers=2).save_pretrained(d / fam)
        assert main(["discover", "--model", str(d / fam), "--task", str(d / "task.jsonl"), "--method", "eap",
                     "--top-n", "30", "--no-curve", "--quiet", "--out", str(d / f"{fam}.json")]) == 0
    assert main(["discover", "--model", str(d / "llama"), "--task", str(d / "task.jsonl"), "--method", "eap",
                 "--top-n", "30", "--no-curve", "--quiet", "--kv-edges", "grouped", "--out", str(d / "grouped.json")]) == 0
    assert main(["discover", "--model", str(d / "gpt2"), "--task", str(d / "task.jsonl"), "--method", "eap",
                 "--top-n", "40", "--no-curve", "--quiet", "--positions", "--out", str(d / "positional.json")]) == 0
    for level in ("node", "neuron"):
        assert main(["discover", "--model", str(d / "gpt2"), "--task", str(d / "task.jsonl"), "--method", "eap",
                     "--top-n", "40" if level == "neuron" else "6", "--no-curve", "--quiet", "--level", level,
                     "--out", str(d / f"{level}.json")]) == 0
    tiny.build("gpt2", n_layers=3).save_pretrained(d / "gpt2-3l")
    data = json.loads((d / "gpt2.json").read_text())
    head = next(n["id"] for n in data["nodes"] if n["in_circuit"] and n["kind"] == "attention")
    data["schema_version"] = "1.1"
    data["labels"] = [{"component": head, "kind": "head", "label": "Induction head", "description": "d",
                       "role_tags": ["induction", "previous_token"], "confidence": 0.9, "status": "ok"}]
    (d / "labeled.json").write_text(json.dumps(data))
    return d


def _doc(work, name):
    return json.loads((work / f"{name}.json").read_text())


def _export(capsys, work, src, fmt, *extra):
    out = work / f"{src}.{fmt}.out"
    assert main(["export", str(work / f"{src}.json"), "--format", fmt, "--out", str(out), *extra]) == 0, \
        capsys.readouterr().err
    return out


def _evaluate(capsys, work, model, circuit):
    capsys.readouterr()
    code = main(["evaluate", "--model", str(work / model), "--task", str(work / "task.jsonl"), "--circuit",
                 str(circuit), "--json", "--quiet"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else err)


# --- MIB / EAP-IG -------------------------------------------------------------------------------------

def test_mib_json_is_graph_to_json_layout(work, capsys):
    data = _doc(work, "gpt2")
    path = _export(capsys, work, "gpt2", "mib")
    raw = json.loads(path.read_text())
    assert raw["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32}
    assert all(set(v) == {"in_graph"} for v in raw["nodes"].values()) and raw["nodes"]["logits"]["in_graph"]
    assert all(set(v) == {"score", "in_graph"} for v in raw["edges"].values())
    ref = RefGraph.from_json(path)  # EAP-IG's own rules: every name, node dicts, cfg with d_model
    assert set(raw["edges"]) == set(ref.edges) and len(ref.edges) == len(data["edges"])
    for e in data["edges"]:  # membership exact; scores are MIB's loss changes (-logit_diff change)
        score, member = ref.edge(e["name"])
        assert member == e["in_circuit"] and score == pytest.approx(-e["score"], rel=1e-5, abs=1e-9)
    inside = {n["id"] for n in data["nodes"] if n["in_circuit"]}
    assert {n for n in ref.node_names[:-1] if ref.nodes_in_graph[ref.node_names.index(n)]} == inside - {"logits"}


def test_mib_pt_is_graph_to_pt_layout(work, capsys):
    ref_json = RefGraph.from_json(_export(capsys, work, "gpt2", "mib"))
    path = _export(capsys, work, "gpt2", "mib-pt")
    raw = torch.load(path, weights_only=True)  # what EAP-IG's from_pt gets from torch.load by default
    assert list(raw) == ["cfg", "src_nodes", "dst_nodes", "edges_scores", "edges_in_graph", "nodes_in_graph"]
    assert raw["edges_scores"].dtype == torch.float32 and raw["edges_in_graph"].dtype == torch.bool
    ref = RefGraph.from_pt(path)
    assert ref.src_nodes == ref.node_names[:-1] and ref.dst_nodes[-1] == "logits" and ref.dst_nodes[4] == "a0.h0<k>"
    np.testing.assert_array_equal(ref.in_graph, ref_json.in_graph)
    np.testing.assert_allclose(ref.scores, ref_json.scores, rtol=1e-6)
    assert not (ref.in_graph & ~ref.real).any()  # nothing outside EAP-IG's real edges


@pytest.mark.parametrize("name", ["llama", "grouped"])
def test_gqa_exports_per_query_head_names(work, capsys, name):
    data = _doc(work, name)
    kv = [e for e in data["edges"] if ".kv" in e["name"] and e["score"] is not None]
    assert bool(kv) == (name == "grouped")  # per-query-head k/v edges by default; --kv-edges grouped: a1.kv0<k>
    raw = json.loads(_export(capsys, work, name, "mib").read_text())
    ref = RefGraph.from_json(work / f"{name}.mib.out")
    assert not any(".kv" in name for name in raw["edges"]) and set(raw["edges"]) == set(ref.edges)
    for e in kv:  # a grouped k/v edge: one edge per query head of its group, each half its score
        src, reader = e["name"].split("->")
        layer, group, slot = re.match(r"a(\d+)\.kv(\d+)<(\w)>", reader).groups()
        for h in (2 * int(group), 2 * int(group) + 1):
            score, member = ref.edge(f"{src}->a{layer}.h{h}<{slot}>")
            assert member == e["in_circuit"] and score == pytest.approx(-e["score"] / 2, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("fmt", ["mib", "mib-pt"])
@pytest.mark.parametrize("name", ["gpt2", "llama", "grouped", "neox", "node", "neuron"])
def test_exported_mib_evaluates_to_the_same_metric(work, capsys, name, fmt):
    """A grouped circuit's MIB file (per query head) evaluates on the per-query-head graph to the
    grouped circuit's metric: a group's k/v edge is exactly all of its query heads' k/v edges."""
    model = {"llama": "llama", "grouped": "llama", "neox": "neox"}.get(name, "gpt2")
    code, original = _evaluate(capsys, work, model, work / f"{name}.json")
    assert code == 0
    path = _export(capsys, work, name, fmt)
    ref = RefGraph.from_pt(path) if fmt == "mib-pt" else RefGraph.from_json(path)
    assert ref.parallel == (name == "neox") and not (ref.in_graph & ~ref.real).any()
    code, imported = _evaluate(capsys, work, model, path)
    assert code == 0, imported
    # a grouped circuit is re-evaluated on the per-query-head graph: the same sums in another fp32 order
    # (faithfulness, a ratio of small differences on this random model, to 1e-5 absolute)
    tol = dict(rel=1e-6, abs=1e-5) if name == "grouped" else dict(rel=1e-9)
    for key in ("clean", "corrupted", "circuit", "faithfulness"):
        assert imported[key] == pytest.approx(original[key], **tol), key
    expanded = sum(2 if ".kv" in e["name"] else 1 for e in _doc(work, name)["edges"] if e["in_circuit"])
    assert imported["n_edges"] == expanded  # 2 query heads per key/value head in the tiny Llama
    assert imported.get("n_neurons") == original.get("n_neurons")


@pytest.mark.parametrize("level", ["node", "neuron"])
def test_mib_node_and_neuron_entries(work, capsys, level):
    data = _doc(work, level)
    raw = json.loads(_export(capsys, work, level, "mib").read_text(), parse_constant=lambda c: float(c))
    ref = RefGraph.from_json(work / f"{level}.mib.out")  # EAP-IG's from_json takes the extra node keys
    assert ref.in_graph.sum() == sum(e["in_circuit"] for e in data["edges"])
    for n in data["nodes"]:
        if n["id"] not in raw["nodes"] or n["id"] == "logits":
            continue  # key/value-head nodes have no MIB counterpart
        entry = raw["nodes"][n["id"]]
        if level == "node" and n.get("score") is not None:
            assert entry["score"] == pytest.approx(-n["score"])  # a loss change, as the edge scores
        if level == "neuron":
            mask, values = entry["neurons"], entry["neurons_scores"]
            if n["kind"] == "attention":  # to_json writes a head's layer slice: row h is head h
                assert len(mask) == 4
                mask, values = mask[n["head"]], values[n["head"]]
            assert len(mask) == 32 and [i for i, k in enumerate(mask) if k] == (n["neurons"] or [])
            for i, v in zip(n["neurons"] or [], n["neuron_scores"] or []):
                if v is not None:
                    assert values[i] == pytest.approx(-v)
    if level == "neuron":
        pt = torch.load(_export(capsys, work, level, "mib-pt"), weights_only=True)
        assert pt["neurons_in_graph"].shape == (len(ref.node_names) - 1, 32)
        assert int(pt["neurons_in_graph"].sum()) == sum(len(n["neurons"] or []) for n in data["nodes"])


def test_mib_import_refuses_another_shape(work, capsys):
    code, err = _evaluate(capsys, work, "gpt2-3l", _export(capsys, work, "gpt2", "mib"))
    assert code == 2 and err.count("\n") == 1 and "2 layers, 4 heads" in err and "3 layers" in err
    raw = json.loads((work / "gpt2.mib.out").read_text())
    raw["edges"]["a1.h0->a0.h0<q>"] = {"score": 0.0, "in_graph": True}
    (work / "bad.mib.json").write_text(json.dumps(raw))
    code, err = _evaluate(capsys, work, "gpt2", work / "bad.mib.json")
    assert code == 2 and "a1.h0->a0.h0<q>" in err and "Traceback" not in err


def test_grouped_graph_refuses_a_split_group(work):
    from discovery.io.export.mib_import import read_mib

    raw = json.loads(export(_doc(work, "llama"), "mib"))
    for name in raw["edges"]:
        raw["edges"][name]["in_graph"] = name == "input->a1.h0<k>"  # h0 and h1 share key/value head 0
    path = work / "split.json"
    path.write_text(json.dumps(raw))
    grouped = Graph(2, 4, 2, False, kv_edges="grouped")
    with pytest.raises(Exception, match="some query heads"):
        read_mib(path).to_circuit(grouped)
    raw["edges"]["input->a1.h1<k>"]["in_graph"] = True  # the whole group: one grouped edge
    path.write_text(json.dumps(raw))
    c = read_mib(path).to_circuit(grouped)
    assert [e.name for e in c.edges if e.in_circuit] == ["input->a1.kv0<k>"]


def test_view_reads_a_mib_graph(work, capsys):
    out = work / "view.html"
    assert main(["view", str(_export(capsys, work, "gpt2", "mib")), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


# --- MIB submission layout -----------------------------------------------------------------------------

def _gpt2_small_doc():
    """A circuit document of GPT-2 small's shape (12 layers, 12 heads: MIB's 32,491 edges), random scores."""
    g = Graph(12, 12)
    scores = np.random.default_rng(0).normal(size=g.n_edges)
    model = {"name": "gpt2", "architecture": "GPT2LMHeadModel", "model_type": "gpt2", "config_hash": "x",
             "n_layers": 12, "n_heads": 12, "n_kv_heads": 12, "parallel_residual": False, "dtype": "float32",
             "d_model": 768}
    return Circuit(model=model, task={"name": "ioi", "source": "ioi.jsonl", "rows": 1, "content_hash": "x"},
                   method={"name": "eap"}, selection={"kind": "given"}, metrics={"metric": "logit_diff"},
                   edges=build_edges(g, scores, np.zeros(g.n_edges, dtype=bool)), nodes=build_nodes(g, set()),
                   code_version="test").model_dump(mode="json")


def test_mib_submission_importances_and_circuits(tmp_path, capsys):
    doc = _gpt2_small_doc()
    src = tmp_path / "c.json"
    src.write_text(json.dumps(doc))
    from discovery.io.export.mib_submission import write_submission

    [imp] = write_submission(doc, tmp_path / "sub", "ioi", "gpt2")
    assert imp == tmp_path / "sub" / "ioi_gpt2" / "importances.json"
    ref = RefGraph.from_json(imp)
    assert len(ref.edges) == 32491 and ref.edge("input->a0.h0<q>")[0] == pytest.approx(-doc["edges"][0]["score"])
    paths = write_submission(doc, tmp_path / "sub2", "ioi", "gpt2", circuits=True, pt=True)
    assert sorted(p.name for p in paths) == sorted(f"circuit_{p:g}.pt" for p in PERCENTAGES)
    counts = []
    for p, path in zip(PERCENTAGES, paths):
        g = RefGraph.from_pt(path)
        n = int(g.in_graph.sum())
        assert n <= int(p / 100 * 32491)  # at most p% of edges
        np.testing.assert_allclose(g.scores, ref.scores, rtol=1e-6)  # scores too: EAP-IG's loaders want them
        counts.append(n)
    assert counts == sorted(counts) and counts[-1] > 0.4 * 32491  # random scores: pruning empties the smallest


@pytest.mark.parametrize("argv, match", [
    (["--task", "ioi", "--model", "gpt3"], "not a MIB circuit-track model"),
    (["--task", "sst2", "--model", "gpt2"], "not a MIB circuit-track task"),
    (["--task", "mcqa", "--model", "gpt2"], "does not evaluate task mcqa on gpt2"),
    (["--task", "ioi"], "needs --task"),
])
def test_mib_submission_bad_names(tmp_path, capsys, argv, match):
    src = tmp_path / "c.json"
    src.write_text(json.dumps(_gpt2_small_doc()))
    assert main(["export", str(src), "--mib-submission", str(tmp_path / "s"), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_mib_submission_refuses_another_model_shape(work, capsys, tmp_path):
    assert main(["export", str(work / "gpt2.json"), "--mib-submission", str(tmp_path), "--task", "ioi",
                 "--model", "gpt2"]) == 2
    assert "32491" in capsys.readouterr().err


# --- Neuronpedia / circuit-tracer ----------------------------------------------------------------------

def _circuit_tracer_model():
    """The field types of circuit-tracer's frontend graph model (circuit_tracer/frontend/graph_models.py:
    Metadata, QParams, Node, Model), as a pydantic check of the graph it would load."""
    from pydantic import BaseModel, ConfigDict

    class Strict(BaseModel):
        model_config = ConfigDict(strict=True)

    class Metadata(Strict):
        slug: str
        scan: str
        transcoder_list: list[str]
        prompt_tokens: list[str]
        prompt: str
        node_threshold: float | None = None
        schema_version: int | None = 1

    class QParams(Strict):
        pinnedIds: list[str]
        supernodes: list[list[str]]
        linkType: str
        clickedId: str
        sg_pos: str

    class Node(Strict):
        node_id: str
        feature: int
        layer: str
        ctx_idx: int
        feature_type: str
        token_prob: float = 0.0
        is_target_logit: bool = False
        run_idx: int = 0
        reverse_ctx_idx: int = 0
        jsNodeId: str
        clerp: str = ""
        influence: float | None = None
        activation: float | None = None

    class Graph(Strict):
        metadata: Metadata
        qParams: QParams
        nodes: list[Node]
        links: list[dict]

    return Graph


def _check_graph(g, data):
    jsonschema.validate(g, SCHEMA)
    _circuit_tracer_model().model_validate(g)
    meta = g["metadata"]
    assert meta["prompt_tokens"] == data["task"]["example"]["tokens"] and meta["prompt"]
    assert isinstance(meta["node_threshold"], float) and meta["transcoder_list"] == []
    ids = {n["node_id"] for n in g["nodes"]}
    assert all(0 <= n["ctx_idx"] < len(meta["prompt_tokens"]) for n in g["nodes"])
    assert all(link["source"] in ids and link["target"] in ids for link in g["links"])
    assert len({(n["layer"], n["feature"], n["ctx_idx"]) for n in g["nodes"]}) == len(g["nodes"])
    assert all(isinstance(n["layer"], str) and isinstance(n["feature"], int) for n in g["nodes"])  # circuit-tracer
    assert all(0 <= n["influence"] <= 1 for n in g["nodes"])
    [logit] = [n for n in g["nodes"] if n["feature_type"] == "logit"]
    p = data["task"]["example"]["answer_prob"]
    # both frontends: token between the double quotes, probability after "(p="
    assert logit["clerp"].split('"')[1] == data["task"]["example"]["answer"]
    assert float(logit["clerp"].split("(p=")[1].split(")")[0]) == pytest.approx(p, abs=5e-4)
    assert logit["token_prob"] == pytest.approx(p) and logit["is_target_logit"]
    pairs = {(e["source"], e["target"]) for e in data["edges"] if e["in_circuit"]}
    assert {(link["source"], link["target"]) for link in g["links"]} == pairs


@pytest.mark.parametrize("name", ["gpt2", "llama", "grouped", "labeled"])
def test_neuronpedia_graph_valid(work, capsys, name):
    data = _doc(work, name)
    g = json.loads(_export(capsys, work, name, "neuronpedia", "--scan", "gpt2-small").read_text())
    _check_graph(g, data)
    assert g["metadata"]["scan"] == "gpt2-small"
    link = g["links"][0]
    raw = [e["score"] for e in data["edges"] if e["in_circuit"] and (e["source"], e["target"]) ==
           (link["source"], link["target"])]
    assert link["weight"] == pytest.approx(-sum(raw))  # positive weight: the edge carries the logit difference
    if name == "labeled":
        rec = data["labels"][0]
        node = next(n for n in g["nodes"] if n["node_id"] == rec["component"])
        assert node["clerp"] == "Induction head" and node["circuitry"]["role_tags"] == ["induction", "previous_token"]


def test_neuronpedia_graph_folder_for_circuit_tracer(work, capsys, tmp_path):
    for name in ("gpt2", "llama", "gpt2"):  # the same slug twice: its index entry is replaced
        assert main(["export", str(work / f"{name}.json"), "--format", "neuronpedia", "--slug", name,
                     "--out", f"{tmp_path}/graphs/"]) == 0
    index = json.loads((tmp_path / "graphs" / "graph-metadata.json").read_text())
    assert [g["slug"] for g in index["graphs"]] == ["llama", "gpt2"]
    g = json.loads((tmp_path / "graphs" / "gpt2.json").read_text())
    jsonschema.validate(g, SCHEMA)
    assert index["graphs"][1]["prompt_tokens"] == g["metadata"]["prompt_tokens"]


@pytest.mark.parametrize("name", ["gpt2", "llama", "grouped", "labeled", "positional"])
def test_neuronpedia_graph_is_drawable_by_circuit_tracers_frontend(work, name):
    """The rules of circuit-tracer's frontend (its formatData; the browser test is
    tests/test_neuronpedia_frontend.py): every node kept, every link drawn on load (its ends pinned)."""
    from discovery.io.export.neuronpedia import frontend_problems

    g = json.loads(export(_doc(work, name), "neuronpedia"))
    assert frontend_problems(g) == []
    assert set(g["qParams"]["pinnedIds"]) == {n["node_id"] for n in g["nodes"]}
    # each rule can fail
    for broken, why in [({"pins": []}, "not drawn on load"), ({"influence": 1.5}, "above node_threshold"),
                        ({"feature": 0}, "share a layer_feature_ctx id"), ({"clerp": "John"}, "clerp")]:
        h = json.loads(json.dumps(g))
        if "pins" in broken:
            h["qParams"]["pinnedIds"] = []
        heads = [n for n in h["nodes"] if n["feature_type"] == "attention head"]
        for key in ("influence", "feature"):
            if key in broken:
                for n in heads[:2] if key == "feature" else heads[:1]:
                    n[key] = broken[key]
                    n["layer"], n["ctx_idx"] = heads[0]["layer"], heads[0]["ctx_idx"]
        if "clerp" in broken:
            next(n for n in h["nodes"] if n["feature_type"] == "logit")["clerp"] = broken["clerp"]
        assert any(why in p for p in frontend_problems(h)), (broken, frontend_problems(h))


def test_neuronpedia_schema_catches_the_old_export(work):
    """The schema check can fail: the export before this issue (null threshold) does not pass."""
    g = json.loads(export(_doc(work, "gpt2"), "neuronpedia"))
    g["metadata"]["node_threshold"] = None
    with pytest.raises(jsonschema.ValidationError, match="not of type 'number'"):
        jsonschema.validate(g, SCHEMA)


def test_neuronpedia_needs_the_representative_row(work, capsys, tmp_path):
    data = _doc(work, "gpt2")
    del data["task"]["example"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert main(["export", str(tmp_path / "old.json"), "--format", "neuronpedia", "--out", str(tmp_path / "o")]) == 2
    assert "representative row" in capsys.readouterr().err


def test_position_aware_circuit_exports(work, capsys, tmp_path):
    """--positions: a Neuronpedia node per component and position (ctx_idx = the position), node-link
    edges keyed by slot and position pair; MIB has no positional form and says so."""
    data = _doc(work, "positional")
    kept = [e for e in data["edges"] if e["in_circuit"]]
    g = json.loads(export(data, "neuronpedia"))
    jsonschema.validate(g, SCHEMA)
    nodes = {n["node_id"]: n for n in g["nodes"]}
    for e in kept:
        src, dst = nodes[f"{e['source']}@{e['src_pos']}"], nodes[f"{e['target']}@{e['dst_pos']}"]
        assert (src["ctx_idx"], dst["ctx_idx"]) == (e["src_pos"], e["dst_pos"])
    assert len({(n["layer"], n["feature"], n["ctx_idx"]) for n in g["nodes"]}) == len(g["nodes"])
    assert all(link["source"] in nodes and link["target"] in nodes for link in g["links"])
    multi = nx.node_link_graph(json.loads(export(data, "node-link")))
    assert multi.number_of_edges() == len(kept)
    assert main(["export", str(work / "positional.json"), "--format", "mib", "--out", str(tmp_path / "m")]) == 2
    assert "position-aware" in capsys.readouterr().err


# --- networkx node-link and GraphML --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt2", "llama", "grouped", "labeled"])
def test_node_link_reads_with_networkx_defaults(work, capsys, name):
    data = _doc(work, name)
    d = json.loads(_export(capsys, work, name, "node-link").read_text())
    g = nx.node_link_graph(d)  # networkx's defaults, nothing passed
    assert isinstance(g, nx.MultiDiGraph)
    kept = [e for e in data["edges"] if e["in_circuit"]]
    assert g.number_of_edges() == len(kept)
    for e in kept:
        attrs = g.edges[e["source"], e["target"], e["slot"]]
        assert attrs["name"] == e["name"] and attrs["score"] == pytest.approx(e["score"])
    if name == "labeled":
        rec = data["labels"][0]
        assert g.nodes[rec["component"]]["label"] == "Induction head"
        assert g.nodes[rec["component"]]["role_tags"] == "induction,previous_token"
    full = nx.node_link_graph(json.loads(export(data, "node-link", all_edges=True)))
    assert full.number_of_edges() == len(data["edges"])


def test_graphml_round_trip(work, capsys):
    data = _doc(work, "labeled")
    path = _export(capsys, work, "labeled", "graphml")
    g = nx.read_graphml(path, force_multigraph=True)
    assert g.is_directed() and g.number_of_edges() == sum(e["in_circuit"] for e in data["edges"])
    for _, _, attrs in g.edges(data=True):
        assert all(isinstance(v, (str, int, float, bool)) for v in attrs.values())
    rec = data["labels"][0]
    assert g.nodes[rec["component"]]["label"] == "Induction head"
    names = {attrs["name"] for _, _, attrs in g.edges(data=True)}
    assert names == {e["name"] for e in data["edges"] if e["in_circuit"]}


# --- older files, bad input, the API's renderer --------------------------------------------------------

def test_older_file_without_d_model(work, capsys, tmp_path):
    data = _doc(work, "gpt2")
    del data["model"]["d_model"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert main(["export", str(tmp_path / "old.json"), "--format", "mib", "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "--d-model" in err and err.count("\n") == 1
    assert main(["export", str(tmp_path / "old.json"), "--format", "mib", "--out", str(tmp_path / "m.json"),
                 "--d-model", "32"]) == 0
    assert RefGraph.from_json(tmp_path / "m.json").d_model == 32


def test_export_errors_answer_before_torch_loads(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from discovery.cli import main; rc = main(['export', 'missing.json', '--format', 'mib', "
            "'--out', 'x']); print(rc, 'torch' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.split() == ["2", "False", "False"] and "not found" in out.stderr


def test_service_renderer(work):
    from discovery.core.errors import UserError
    from service.api.formats import FORMATS, render

    content = (work / "labeled.json").read_bytes()
    for fmt, spec in FORMATS.items():
        body, media_type = render(content, fmt)
        assert isinstance(body, bytes) and media_type == spec.media_type
    data = json.loads(content)
    del data["task"]["example"]
    with pytest.raises(UserError, match="representative row"):  # the API answers 422 problem+json
        render(json.dumps(data).encode(), "neuronpedia")
