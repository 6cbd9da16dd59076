"""circuitry's Neuronpedia export (`circuitry export --format neuronpedia --out DIR/`) drawn by
circuit-tracer's own local frontend in headless Chromium (tests/ct_frontend.py; skipped without the
peer venv or the frontend's libraries). The export pins the circuit's nodes so the frontend draws the
circuit's links and its subgraph on load; without pins it shows bare nodes (checked here too). The
same rules are checked without a browser in tests/test_export.py (frontend_problems)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ct_frontend import Frontend, available, route_offline, wait_drawn
from discovery.cli import main
from discovery.io.export.neuronpedia import frontend_problems
from viewer_browser import Page, chromium_path, launch

DOCS = Path(__file__).resolve().parent.parent / "docs"
pytestmark = pytest.mark.usefixtures("one_thread")

PAINTED = """() => [...document.querySelectorAll('.link-graph canvas')].map(c => {
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })"""


@pytest.fixture(scope="module")
def graph_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("np")
    assert main(["discover", "--model", "toy:ioi", "--task", "ioi", "--n", "16", "--seed", "1", "--method", "eap",
                 "--top-n", "30", "--no-curve", "--quiet", "--out", str(d / "ioi.json")]) == 0
    assert main(["export", str(d / "ioi.json"), "--format", "neuronpedia", "--slug", "toy-ioi-eap",
                 "--out", f"{d}/graphs/"]) == 0
    return d / "graphs"


@pytest.fixture(scope="module")
def browser():
    why = available()
    if why:
        pytest.skip(why)
    pw = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    if chromium_path() is None:
        pytest.skip("no chromium binary (apt-get install chromium)")
    with pw.sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


def test_the_export_draws_in_circuit_tracers_frontend(browser, graph_dir, tmp_path):
    graph = json.loads((graph_dir / "toy-ioi-eap.json").read_text())
    assert frontend_problems(graph) == []
    with Frontend(graph_dir) as url:
        page, blocked = Page(browser), []
        page.set_viewport_size({"width": 1500, "height": 950})
        route_offline(page.page, url, blocked)
        page.goto(url)
        wait_drawn(page, len(graph["nodes"]))
        page.wait_for_timeout(800)
        assert page.locator(".link-graph text.node").count() == len(graph["nodes"])  # every node placed
        pinned_canvas = page.evaluate(PAINTED)[1]  # layers: all, pinned, background, clicked
        assert pinned_canvas > 1000  # the circuit's links, drawn on load
        assert page.locator(".subgraph .supernode-container").count() == len(graph["qParams"]["pinnedIds"])
        labels = page.locator(".subgraph .node-text-container").all_inner_texts()
        assert any('Output "' in t for t in labels) and any("a" in t and ".h" in t for t in labels)
        page.screenshot(path=str(tmp_path / "neuronpedia-circuit-tracer.png"), full_page=True)
        if os.environ.get("CIRCUITRY_UPDATE_DOCS"):
            shutil.copy(tmp_path / "neuronpedia-circuit-tracer.png", DOCS / "neuronpedia-circuit-tracer.png")

        # clicking a head lists its inputs from our links, by their ids
        head = next(n for n in graph["nodes"] if n["feature_type"] == "attention head" and
                    any(k["target"] == n["node_id"] for k in graph["links"]))
        xy = page.evaluate("id => d3.selectAll('.link-graph text.node').data().find(d => d.nodeId === id).pos", head["node_id"])
        box = page.locator(".link-graph svg").last.bounding_box()
        margin = page.evaluate("() => { const t = document.querySelector('.link-graph svg').lastElementChild.getAttribute('transform'); "
                               "return /translate\\(([-\\d.]+),\\s*([-\\d.]+)/.exec(t).slice(1).map(Number); }")
        page.mouse.click(box["x"] + margin[0] + xy[0], box["y"] + margin[1] + xy[1])
        page.wait_for_timeout(500)
        inputs = {k["source"] for k in graph["links"] if k["target"] == head["node_id"]}
        assert head["node_id"] in page.locator(".node-connections .header-top-row").inner_text()
        listed = page.locator(".node-connections .connections").first.inner_text()  # "Input Features"
        assert listed.startswith("Input Features")
        assert all(src in listed or (src == "input" and "Emb:" in listed) for src in inputs), (inputs, listed[:400])
        assert blocked == [] and page.errors == []


def test_without_pins_the_frontend_draws_no_links(browser, graph_dir, tmp_path):
    """The property the export fixed: with nothing pinned the same graph shows nodes and no links."""
    bare = tmp_path / "bare"
    shutil.copytree(graph_dir, bare)
    g = json.loads((bare / "toy-ioi-eap.json").read_text())
    g["qParams"]["pinnedIds"] = []
    (bare / "toy-ioi-eap.json").write_text(json.dumps(g))
    assert frontend_problems(g) and "not drawn on load" in frontend_problems(g)[0]
    with Frontend(bare) as url:
        page, blocked = Page(browser), []
        route_offline(page.page, url, blocked)
        page.goto(url)
        wait_drawn(page, len(g["nodes"]))
        page.wait_for_timeout(800)
        assert page.locator(".link-graph text.node").count() == len(g["nodes"])
        assert page.evaluate(PAINTED)[1] == 0 and page.locator(".subgraph .supernode-container").count() == 0
        assert page.errors == []


def test_a_feature_graph_export_draws_in_circuit_tracers_frontend(browser, tmp_path):
    """An attribution graph (toy:ioi with its shipped transcoders) exported for Neuronpedia is drawn by
    circuit-tracer's frontend: its nodes placed, a feature's links drawn when it is clicked."""
    g = tmp_path / "g.json"
    assert main(["attribute", "--model", "toy:ioi", "--transcoders", "toy:ioi", "--prompt",
                 "When Mary and John went to the store, John gave a drink to", "--check", "0", "--quiet",
                 "--out", str(g)]) == 0
    assert main(["export", str(g), "--format", "neuronpedia", "--slug", "toy-ioi-features",
                 "--out", f"{tmp_path}/graphs/"]) == 0
    graph = json.loads((tmp_path / "graphs" / "toy-ioi-features.json").read_text())
    ids = {n["node_id"] for n in graph["nodes"]}
    with Frontend(tmp_path / "graphs") as url:
        page, blocked = Page(browser), []
        page.set_viewport_size({"width": 1500, "height": 950})
        route_offline(page.page, url, blocked)
        page.goto(url)
        wait_drawn(page, len(ids))
        page.wait_for_timeout(800)
        placed = set(page.evaluate("() => d3.selectAll('.link-graph text.node').data().map(d => d.nodeId)"))
        # nodes placed: all but 1 of 56 here (1_99_5, a feature the frontend itself leaves out of its layout; the
        # file is the one circuit-tracer writes for the same graph, benchmarks/ct_compare.py)
        assert placed <= ids and len(placed) >= 0.95 * len(ids), (sorted(ids - placed), sorted(placed - ids))
        feature = next(n for n in graph["nodes"] if n["feature_type"] == "cross layer transcoder"
                       and n["node_id"] in placed and any(k["target"] == n["node_id"] for k in graph["links"]))
        xy = page.evaluate("id => d3.selectAll('.link-graph text.node').data().find(d => d.nodeId === id).pos",
                           feature["node_id"])
        box = page.locator(".link-graph svg").last.bounding_box()
        margin = page.evaluate("() => { const t = document.querySelector('.link-graph svg').lastElementChild.getAttribute('transform'); "
                               "return /translate\\(([-\\d.]+),\\s*([-\\d.]+)/.exec(t).slice(1).map(Number); }")
        page.mouse.click(box["x"] + margin[0] + xy[0], box["y"] + margin[1] + xy[1])
        page.wait_for_timeout(500)
        assert page.evaluate(PAINTED)[3] > 100  # the clicked feature's links
        page.screenshot(path=str(tmp_path / "neuronpedia-features.png"), full_page=True)
        if os.environ.get("CIRCUITRY_UPDATE_DOCS"):
            shutil.copy(tmp_path / "neuronpedia-features.png", DOCS / "neuronpedia-features.png")
        # the frontend asks the hub for the scan's feature descriptions (offline here: refused); nothing else
        assert all("/features/" in u for u in blocked), blocked
        assert [e for e in page.errors if "Failed to" not in e and "fetch" not in e] == [], page.errors
