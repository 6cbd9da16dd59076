"""The circuit graph in headless Chromium: labels drawn on the nodes, hover/click highlighting, edge
colour by whether an edge carries the behaviour, zoom and pan, a layout that stays readable on a
GPT-2-small-shaped circuit (MLPs off the head columns, edges never drawn over a node), the curve's
readout against the header, and the timeline's axes. Screenshots go to the test's tmp dir (and to
docs/ with CIRCUITRY_UPDATE_DOCS=1)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from discovery.core.circuit import (Circuit, MethodInfo, Metrics, ModelInfo, SelectionInfo, TaskInfo, build_edges,
                               build_nodes)
from discovery.cli import main
from discovery.core.graph import Graph
from discovery.pipeline.selection import nodes_in_circuit, prune, top_n
from viewer_browser import Page, chromium_path, launch

DOCS = Path(__file__).resolve().parent.parent / "docs"
pytestmark = pytest.mark.usefixtures("one_thread")

# Important components of a made-up GPT-2-small circuit: edges among them (and the input/logits) score
# high, so the top edges form paths that survive pruning, as a real circuit's do.
IMPORTANT = {f"a{layer}.h{head}" for layer, head in [
    (0, 1), (0, 10), (1, 11), (2, 2), (3, 0), (4, 11), (5, 5), (5, 8), (6, 9), (7, 3), (7, 9), (8, 6), (8, 10),
    (9, 6), (9, 9), (10, 0), (10, 7), (10, 10), (11, 2), (11, 10)]} | {"m0", "m1", "m5", "m9", "m10"}


def gpt2_shaped_circuit(n: int = 320, seed: int = 0) -> dict:
    g = Graph(12, 12)
    assert g.n_edges == 32491
    rng = np.random.default_rng(seed)
    scores = -np.abs(rng.normal(size=g.n_edges)) * 0.01  # logit_diff: important edges are negative
    for i, name in enumerate(g.edge_names):
        src, dst = name.split("->")
        dst = dst.split("<")[0]
        if (src in IMPORTANT or src == "input") and (dst in IMPORTANT or dst == "logits"):
            scores[i] *= 1 + 60 * rng.random()
    scores[rng.random(g.n_edges) < 0.15] *= -0.5  # some edges work against the behaviour
    keep = prune(g, top_n(g, scores, n, higher_is_better=True, absolute=True))
    nodes = nodes_in_circuit(g, keep)
    c = Circuit(model=ModelInfo(name="gpt2-small-shape", architecture="GPT2LMHeadModel", model_type="gpt2",
                                config_hash="-", n_layers=12, n_heads=12, n_kv_heads=12, parallel_residual=False,
                                dtype="float32", d_model=768),
                task=TaskInfo(name="ioi", source="builtin:ioi?n=64&seed=0", rows=64, content_hash="-"),
                method=MethodInfo(name="eap-ig", params={"metric": "logit_diff"}),
                selection=SelectionInfo(kind="top-n", value=n), nodes=build_nodes(g, nodes),
                edges=build_edges(g, scores, keep),
                metrics=Metrics(metric="logit_diff", n_edges=int(keep.sum()), n_nodes=len(nodes), faithfulness=0.87),
                code_version="test")
    return json.loads(c.model_dump_json())


@pytest.fixture(scope="module")
def browser():
    pw = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if chromium_path() is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    with pw.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def ioi_labeled(tmp_path_factory):
    """toy:ioi's circuit (EAP, top 30, curve on), labeled offline."""
    import torch

    from discovery.pipeline.discover import discover
    from discovery.model.adapters import load_model
    from discovery.task_library import build_task
    from labeling import label_circuit

    torch.set_num_threads(1)
    model = load_model("toy:ioi", device="cpu")
    task = build_task("ioi", tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=64, seed=1)
    circuit = discover(model, task, "eap", top_n=30, progress=False)
    path = tmp_path_factory.mktemp("ioi") / "ioi.json"
    label_circuit(circuit, model, task).save(path)
    return path


@pytest.fixture(scope="module")
def induction_labeled(tmp_path_factory):
    """toy:induction's circuit (EAP, top 20), labeled offline: its induction heads pass their role tests."""
    import torch

    from discovery.pipeline.discover import discover
    from discovery.model.adapters import load_model
    from discovery.task_library import build_task
    from labeling import label_circuit

    torch.set_num_threads(1)
    model = load_model("toy:induction", device="cpu")
    task = build_task("induction", tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=32, seed=1)
    circuit = discover(model, task, "eap", top_n=20, curve=False, progress=False)
    path = tmp_path_factory.mktemp("induction") / "induction.json"
    label_circuit(circuit, model, task).save(path)
    return path


def _open(browser, tmp_path, circuit_path, *extra, name="view.html"):
    out = tmp_path / name
    assert main(["view", str(circuit_path), *map(str, extra), "--out", str(out)]) == 0
    page = Page(browser)
    page.goto(out.as_uri())
    page.wait_for_selector("#nodes .node")
    return page


def _shot(page, tmp_path, name, docs=True):
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if docs and os.environ.get("CIRCUITRY_UPDATE_DOCS"):
        shutil.copy(tmp_path / name, DOCS / name)


# every drawn edge, sampled along its length, against every drawn node that is not one of its ends
OVERLAPS = """() => {
  const centre = g => { const m = /translate\\(([-\\d.]+),([-\\d.]+)\\)/.exec(g.getAttribute('transform'));
                        return [parseFloat(m[1]), parseFloat(m[2])]; };
  const nodes = [...document.querySelectorAll('#nodes > g')].map(g => ({id: g.dataset.id, c: centre(g),
                 wide: !!g.querySelector('rect[width="64"]')}));
  const hits = [];
  for (const p of document.querySelectorAll('#edges path')) {
    const len = p.getTotalLength(), ends = [p.dataset.source, p.dataset.target];
    for (let i = 0; i <= 80; i++) {
      const q = p.getPointAtLength(len * i / 80);
      for (const n of nodes) {
        if (ends.includes(n.id)) continue;
        const dx = Math.abs(q.x - n.c[0]), dy = Math.abs(q.y - n.c[1]);
        if (n.wide ? (dx < 32 && dy < 11) : Math.hypot(dx, dy) < 11) hits.push(p.dataset.name + ' over ' + n.id);
      }
    }
  }
  return [...new Set(hits)];
}"""


def test_gpt2_small_shaped_circuit_layout(browser, tmp_path):
    c = gpt2_shaped_circuit()
    assert 180 <= c["metrics"]["n_edges"] <= 300  # a few hundred edges (the issue: 223); top 320, then pruned
    path = tmp_path / "gpt2.json"
    path.write_text(json.dumps(c))
    page = _open(browser, tmp_path, path)
    assert page.locator("#edges path").count() == c["metrics"]["n_edges"]
    assert page.locator("#nodes > g").count() == len(c["nodes"]) == 1 + 12 * 13 + 1
    assert page.evaluate(OVERLAPS) == []  # edges are routed around the nodes

    xs = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#nodes > g')].map(g =>
        [g.dataset.id, parseFloat(/translate\\(([-\\d.]+)/.exec(g.getAttribute('transform'))[1])]))""")
    head_cols = {round(xs[f"a0.h{h}"], 1) for h in range(12)}
    assert all(round(xs[f"a{layer}.h{h}"], 1) in head_cols for layer in range(12) for h in range(12))
    assert all(min(abs(xs[f"m{layer}"] - x) for x in head_cols) > 40 for layer in range(12))  # MLPs off the head columns

    # edge colour: for logit_diff an important edge has a negative score and is drawn as carrying the behaviour
    scores = {e["name"]: e["score"] for e in c["edges"] if e["in_circuit"]}
    classes = page.evaluate("() => [...document.querySelectorAll('#edges path')].map(p => [p.dataset.name, p.getAttribute('class')])")
    for name, cls in classes:
        assert ("carries" in cls) == (scores[name] < 0) and ("opposes" in cls) == (scores[name] > 0), (name, cls)
    legend = page.locator("#legend").inner_text()
    assert "switching the edge off lowers logit_diff (score < 0)" in legend
    colours = page.evaluate("""() => [...new Set([...document.querySelectorAll('#edges path')].map(p =>
        p.classList.contains('carries') + ':' + getComputedStyle(p).stroke))]""")
    assert len(colours) == 2  # one colour each

    # zoom around the pointer with the wheel, pan by dragging the background, fit again
    box = page.locator("#graph").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -400)
    zoomed = page.locator("#viewport").get_attribute("transform")
    assert float(zoomed.split("scale(")[1].rstrip(")")) > 1.5
    page.mouse.move(box["x"] + 20, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + 220, box["y"] + 120, steps=5)
    page.mouse.up()
    panned = page.locator("#viewport").get_attribute("transform")
    assert panned != zoomed and panned.split("scale(")[1] == zoomed.split("scale(")[1]
    page.locator("#zoom-fit").click()
    assert page.locator("#viewport").get_attribute("transform") == "translate(0.00,0.00) scale(1.0000)"
    _shot(page, tmp_path, "viewer-gpt2-shape.png", docs=False)

    # hovering a node highlights its edges and fades the rest; clicking keeps it
    node = "a9.h9"
    mine = [e["name"] for e in c["edges"] if e["in_circuit"] and node in (e["source"], e["target"])]
    assert mine
    page.locator(f'#nodes [data-id="{node}"]').hover()
    hl = page.evaluate("() => [...document.querySelectorAll('#edges path.hl')].map(p => p.dataset.name)")
    assert sorted(hl) == sorted(mine)
    page.wait_for_function("""() => [...document.querySelectorAll('#edges path')].every(p =>
        p.classList.contains('hl') ? parseFloat(getComputedStyle(p).opacity) === 1
                                   : parseFloat(getComputedStyle(p).opacity) < 0.1)""", timeout=5000)  # after the fade
    page.locator(f'#nodes [data-id="{node}"]').click()
    page.mouse.move(box["x"] + 5, box["y"] + box["height"] - 5)  # away: the clicked node stays highlighted
    assert page.locator("#edges path.hl").count() == len(mine)
    assert page.locator("#panel h2").inner_text() == node
    _shot(page, tmp_path, "viewer-gpt2-shape-selected.png")
    assert page.errors == []


def test_labeled_toy_ioi_circuit(browser, ioi_labeled, tmp_path):
    c = json.loads(Path(ioi_labeled).read_text())
    page = _open(browser, tmp_path, ioi_labeled)
    assert page.evaluate(OVERLAPS) == []
    # every labeled component shows a short label on the graph, in its role's colour; unverified ones end in "?"
    short = {"copy_suppression": "copy-supp.", "name_mover": "name mover", "induction": "induction",
             "previous_token": "prev-token"}
    for rec in c["labels"]:
        text = page.locator(f'#nodes [data-id="{rec["component"]}"] text.node-label').text_content()
        assert text.endswith("?") == (rec["status"] != "ok"), (rec["component"], text)
        role = next((t for t in rec["role_tags"] if t != "other"), None)
        if role in short:
            assert text.rstrip("?") == short[role]
    unverified = next(r for r in c["labels"] if r["status"] == "unverified")

    # the node panel: label, status and why, the detection score beside its random label
    page.locator(f'#nodes [data-id="{unverified["component"]}"]').click()
    assert page.locator("#node-reason").inner_text().startswith("why not ok: ")
    scores = page.locator("#scores").inner_text()
    det = unverified["scores"]["detection"]
    assert "detection" in scores and f"AUC {det['value']:.2f} [{det['ci_low']:.2f}" in scores

    # the curve: readable axes, a readout that matches the header
    header = page.locator("#summary").inner_text()
    f = f"{c['metrics']['faithfulness']:.3f}"
    assert f"faithfulness {f}" in header
    assert f"faithfulness {f}" in page.locator("#curve-text").inner_text()
    sizes = page.evaluate("() => [...document.querySelectorAll('#curve text.tick')].map(t => parseFloat(getComputedStyle(t).fontSize))")
    assert len(sizes) >= 8 and min(sizes) >= 11
    assert page.locator("#curve line.axis").count() == 2
    _shot(page, tmp_path, "viewer.png")
    assert page.errors == []


def test_ok_labels_drawn_in_their_role_colour(browser, induction_labeled, tmp_path):
    """A label that passed its role tests (toy:induction's induction heads; on toy:ioi none passes since
    the IOI role tests, docs/labeling.md) is drawn in its role's colour, without "?", and its panel says ok."""
    c = json.loads(Path(induction_labeled).read_text())
    page = _open(browser, tmp_path, induction_labeled, name="induction.html")
    ok = next(r for r in c["labels"] if r["status"] == "ok")
    fill = lambda node: page.locator(f'#nodes [data-id="{node}"] circle, #nodes [data-id="{node}"] rect').first.evaluate(  # noqa: E731
        "e => getComputedStyle(e).fill")
    assert fill(ok["component"]) != fill(next(n["id"] for n in c["nodes"] if not n["in_circuit"]))
    assert not page.locator(f'#nodes [data-id="{ok["component"]}"] text.node-label').text_content().endswith("?")
    page.locator(f'#nodes [data-id="{ok["component"]}"]').click()
    assert page.locator("#node-status").inner_text().endswith("status ok · heuristic")
    assert page.locator("#node-reason").count() == 0
    assert page.errors == []


def test_timeline_has_axes(browser, ioi_labeled, tmp_path):
    c = json.loads(Path(ioi_labeled).read_text())
    paths = []
    for i, (rev, keep) in enumerate([("step-100", 10), ("step-200", 20), ("step-300", 30)]):
        d = json.loads(json.dumps(c))
        d["model"]["revision"] = rev
        inside = [e for e in d["edges"] if e["in_circuit"]]
        for e in inside[keep:]:
            e["in_circuit"] = False
        d["metrics"]["n_edges"] = min(keep, len(inside))
        paths.append(tmp_path / f"c{i}.json")
        paths[-1].write_text(json.dumps(d))
    out = tmp_path / "t.html"
    assert main(["view", *map(str, paths), "--timeline", "--out", str(out)]) == 0
    page = Page(browser)
    page.goto(out.as_uri())
    page.wait_for_selector("#timeline")
    assert page.locator("#timeline line.axis").count() == 3  # x, edges (left), faithfulness (right)
    text = page.evaluate(
        "() => [...document.querySelectorAll('#timeline text')].map(t => t.textContent)")
    assert "edges in the circuit" in text and "faithfulness" in text
    ticks = page.evaluate("() => [...document.querySelectorAll('#timeline text.tick')].map(t => parseFloat(getComputedStyle(t).fontSize))")
    assert len(ticks) >= 8 and min(ticks) >= 11
    _shot(page, tmp_path, "viewer-timeline.png")
    assert page.errors == []
