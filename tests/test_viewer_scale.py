"""The viewer at GPT-2 scale, in headless Chromium: a GPT-2-small-shaped circuit of ~870 edges fits a
1600x1000 window on load, opens as an overview (the strongest edges one by one, every edge summed by
layer in the flow matrix, every edge on zoom), with a real tooltip, the file name as its title and a
page whose size does not grow with the graph's unused edges; grouped-query heads are grouped.
Screenshots go to the test's tmp dir (and to docs/ with CIRCUITRY_UPDATE_DOCS=1)."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from discovery.core.circuit import (Circuit, MethodInfo, Metrics, ModelInfo, SelectionInfo, TaskInfo, build_edges,
                               build_nodes)
from discovery.cli import main
from discovery.core.graph import Graph
from discovery.pipeline.selection import nodes_in_circuit, prune, top_n
from test_viewer_graph import OVERLAPS, _shot, browser, gpt2_shaped_circuit  # noqa: F401 (browser: a fixture)
from viewer_browser import Page

pytestmark = pytest.mark.usefixtures("one_thread")
OVERVIEW_TOP = 80  # viewer.js


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    c = gpt2_shaped_circuit(n=1350)
    c["model"]["name"] = "/home/someone/models/gpt2-small-shape"  # a local path: the title must not carry it
    path = tmp_path_factory.mktemp("big") / "gpt2-ioi.json"
    path.write_text(json.dumps(c))
    return c, path


def _view(tmp_path, path, name="view.html"):
    out = tmp_path / name
    assert main(["view", str(path), "--out", str(out)]) == 0
    return out


def _open(browser, out, size=(1600, 1000)):
    page = Page(browser)
    page.set_viewport_size({"width": size[0], "height": size[1]})
    page.goto(out.as_uri())
    page.wait_for_selector("#nodes .node")
    return page


VISIBLE = "() => [...document.querySelectorAll('#edges path')].filter(p => getComputedStyle(p).visibility !== 'hidden').map(p => p.dataset.name)"


def _block(node_id, n_layers):
    if node_id == "input":
        return -1
    if node_id == "logits":
        return n_layers
    return int(node_id[1:].split(".")[0])


def test_page_size_follows_the_circuit_not_the_graph(big, tmp_path):
    c, path = big
    out = _view(tmp_path, path)
    assert 868 - 40 <= c["metrics"]["n_edges"] <= 868 + 40 and len(c["edges"]) == 32491
    size = out.stat().st_size
    assert size < 400_000, size  # was 4.5 MB: every edge of the graph
    # the same circuit in a file that lists half of the graph's unused edges: the same page, to the byte
    slim = dict(c, edges=[e for i, e in enumerate(c["edges"]) if e["in_circuit"] or i % 2 == 0])
    (tmp_path / "slim" / "gpt2-ioi.json").parent.mkdir()
    (tmp_path / "slim" / "gpt2-ioi.json").write_text(json.dumps(slim))
    slim_out = _view(tmp_path, tmp_path / "slim" / "gpt2-ioi.json", "slim.html")
    assert abs(slim_out.stat().st_size - size) <= 0.02 * size  # only which weak unused edges fill the slider differs
    text = out.read_text()
    assert "<title>gpt2-ioi.json · gpt2-small-shape · ioi · eap-ig</title>" in text and "/home/someone" not in text.split("</title>")[0]


def test_gpt2_scale_fits_the_window_as_an_overview(browser, big, tmp_path):
    c, path = big
    page = _open(browser, _view(tmp_path, path))
    assert page.title() == "gpt2-ioi.json · gpt2-small-shape · ioi · eap-ig"
    inside = [e for e in c["edges"] if e["in_circuit"]]
    n = len(inside)
    assert page.locator("#edges path").count() == n

    # fit on load: every node inside the 1600x1000 window, big enough to read
    boxes = page.evaluate("() => [...document.querySelectorAll('#nodes > g')].map(g => { const r = g.querySelector('circle, rect').getBoundingClientRect(); return [g.dataset.id, r.left, r.top, r.right, r.bottom, r.width]; })")
    assert len(boxes) == len(c["nodes"])
    for node, left, top, right, bottom, _ in boxes:
        assert left >= 0 and top >= 0 and right <= 1600 and bottom <= 1000, (node, left, top, right, bottom)
    heads = [b[5] for b in boxes if ".h" in b[0]]
    assert min(heads) >= 15  # a head's circle is at least 15 px across (22 at natural size)
    label_px = page.evaluate("() => { const t = document.querySelector('#nodes text'); return t.getBoundingClientRect().height; }")
    assert label_px >= 7
    assert page.evaluate(OVERLAPS) == []  # all ~870 routed around the nodes
    assert page.evaluate("() => document.querySelectorAll('#graph title, #flow title').length") == 0  # no native tooltips

    # the overview: the OVERVIEW_TOP strongest edges drawn one by one, the rest hidden
    strongest = sorted(inside, key=lambda e: -abs(e["score"]))[:OVERVIEW_TOP]
    assert sorted(page.evaluate(VISIBLE)) == sorted(e["name"] for e in strongest)
    assert "Overview: the 80 strongest of the %d edges" % n in page.locator("#overview-note").inner_text()

    # the flow matrix sums every drawn edge by layer: counts and |score| sums against our own aggregation
    want = defaultdict(lambda: [0, 0.0])
    for e in inside:
        key = (_block(e["source"], 12), _block(e["target"], 12))
        want[key][0] += 1
        want[key][1] += abs(e["score"])
    cells = page.evaluate("() => [...document.querySelectorAll('#flow-matrix rect.cell')].map(r => [+r.dataset.from, +r.dataset.to, +r.dataset.n, +r.dataset.sum])")
    assert {(f, t): nn for f, t, nn, _ in cells} == {k: v[0] for k, v in want.items()}
    for f, t, _, total in cells:
        assert total == pytest.approx(want[(f, t)][1], rel=1e-5)
    assert sum(cell[2] for cell in cells) == n
    _shot(page, tmp_path, "viewer-gpt2-scale.png")

    # a real tooltip on an edge: a positioned element, with the edge's slot and score
    first = page.locator("#edges path:not(.minor)").last
    first.dispatch_event("mouseenter", {"clientX": 400, "clientY": 300})
    tip = page.locator("#tooltip")
    assert tip.is_visible() and f"slot {first.get_attribute('data-slot')}" in tip.inner_text()
    assert tip.evaluate("t => getComputedStyle(t).position") == "fixed"
    first.dispatch_event("mouseleave")
    assert not tip.is_visible()

    # a flow cell: its edges shown in the graph, exactly those of that pair of layers
    f, t, nn, _ = max(cells, key=lambda x: x[2])
    page.locator(f'#flow-matrix rect.cell[data-from="{f}"][data-to="{t}"]').click()
    hl = page.evaluate("() => [...document.querySelectorAll('#edges path.hl')].filter(p => getComputedStyle(p).visibility !== 'hidden').map(p => p.dataset.name)")
    assert sorted(hl) == sorted(e["name"] for e in inside if (_block(e["source"], 12), _block(e["target"], 12)) == (f, t))
    page.locator(f'#flow-matrix rect.cell[data-from="{f}"][data-to="{t}"]').click()  # again: cleared
    assert page.locator("#edges path.hl").count() == 0

    # hovering a node shows all of its edges, also those the overview hides
    node = max({e["target"] for e in inside if ".h" in e["target"]}, key=lambda x: sum(e["target"] == x for e in inside))
    mine = sorted(e["name"] for e in inside if node in (e["source"], e["target"]))
    page.locator(f'#nodes [data-id="{node}"]').hover()
    shown = page.evaluate("() => [...document.querySelectorAll('#edges path.hl')].filter(p => getComputedStyle(p).visibility !== 'hidden').map(p => p.dataset.name)")
    assert sorted(shown) == mine and len(mine) > sum(e["name"] in mine for e in strongest)
    assert node in tip.inner_text() and "drawn edges" in tip.inner_text()
    page.mouse.move(5, 5)

    # zoomed in: every edge
    box = page.locator("#graph").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -600)
    assert float(page.locator("#viewport").get_attribute("transform").split("scale(")[1].rstrip(")")) >= 2
    assert len(page.evaluate(VISIBLE)) == n
    _shot(page, tmp_path, "viewer-gpt2-scale-zoomed.png")
    page.locator("#zoom-fit").click()
    assert len(page.evaluate(VISIBLE)) == OVERVIEW_TOP
    assert page.errors == []


def gqa_circuit(n_layers=6, n_heads=8, n_kv=2, n=200, seed=1) -> dict:
    g = Graph(n_layers, n_heads, n_kv)
    rng = np.random.default_rng(seed)
    scores = -np.abs(rng.normal(size=g.n_edges)) * 0.01
    keep = prune(g, top_n(g, scores, n))
    nodes = nodes_in_circuit(g, keep)
    c = Circuit(model=ModelInfo(name="llama-gqa-shape", architecture="LlamaForCausalLM", model_type="llama",
                                config_hash="-", n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv,
                                parallel_residual=False, dtype="float32", d_model=64),
                task=TaskInfo(name="induction", source="builtin:induction", rows=8, content_hash="-"),
                method=MethodInfo(name="eap", params={"metric": "logit_diff"}), selection=SelectionInfo(kind="top-n", value=n),
                nodes=build_nodes(g, nodes), edges=build_edges(g, scores, keep),
                metrics=Metrics(metric="logit_diff", n_edges=int(keep.sum()), n_nodes=len(nodes)), code_version="t")
    return json.loads(c.model_dump_json())


def test_grouped_query_heads_are_grouped(browser, tmp_path):
    c = gqa_circuit()
    path = tmp_path / "gqa.json"
    path.write_text(json.dumps(c))
    page = _open(browser, _view(tmp_path, path))
    xs = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#nodes > g')].map(g =>
        [g.dataset.id, parseFloat(/translate\\(([-\\d.]+)/.exec(g.getAttribute('transform'))[1])]))""")
    boxes = page.evaluate("() => [...document.querySelectorAll('#graph rect.kv-group')].map(r => [+r.dataset.layer, +r.dataset.group, +r.getAttribute('x'), +r.getAttribute('width')])")
    assert sorted((layer, g) for layer, g, _, _ in boxes) == [(layer, g) for layer in range(6) for g in range(2)]
    for layer, g, x, w in boxes:  # each box holds exactly the query heads of its key/value group
        held = {h for h in range(8) if x <= xs[f"a{layer}.h{h}"] <= x + w}
        assert held == set(range(4 * g, 4 * g + 4)), (layer, g, held)
    within = xs["a0.h1"] - xs["a0.h0"]
    assert xs["a0.h4"] - xs["a0.h3"] > 1.3 * within  # a gap between the groups
    assert page.evaluate(OVERLAPS) == []
    _shot(page, tmp_path, "viewer-gqa.png")
    assert page.errors == []


@pytest.mark.parametrize("shape", ["gpt2", "gqa"])
def test_circuit_plot_is_laid_out_like_the_viewer(browser, big, tmp_path, shape):
    """Circuit.plot()'s positions are the viewer's up to one scale and offset per axis (y flipped):
    MLPs in their own column, not the input/logits one; grouped-query groups apart; each node named."""
    import matplotlib
    matplotlib.use("Agg")
    from discovery.core.notebook import layout

    c = big[0] if shape == "gpt2" else gqa_circuit()
    path = tmp_path / f"{shape}.json"
    path.write_text(json.dumps(c))
    page = _open(browser, _view(tmp_path, path))
    screen = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#nodes > g')].map(g => {
        const m = /translate\\(([-\\d.]+),([-\\d.]+)\\)/.exec(g.getAttribute('transform'));
        return [g.dataset.id, [parseFloat(m[1]), parseFloat(m[2])]]; }))""")
    circuit = Circuit.model_validate(c)
    pos = layout(circuit.nodes, circuit.model.n_kv_heads)
    ids = sorted(screen)
    assert set(ids) == set(pos)
    for axis, sign in ((0, 1), (1, -1)):
        ours = np.array([pos[i][axis] for i in ids])
        theirs = np.array([screen[i][axis] for i in ids])
        a, b = np.polyfit(ours, theirs, 1)
        assert np.sign(a) == sign and abs(a) > 20
        assert np.abs(a * ours + b - theirs).max() < 10, (axis, ids[int(np.argmax(np.abs(a * ours + b - theirs)))])
    mlp_x = {pos[i][0] for i in ids if i.startswith("m")}
    assert len(mlp_x) == 1 and mlp_x.pop() > max(pos[i][0] for i in ids if ".h" in i) > pos["logits"][0]
    ax = circuit.plot()
    assert {t.get_text().split("\n")[0] for t in ax.texts} == {n.id for n in circuit.nodes if n.in_circuit}
    ax.figure.savefig(tmp_path / f"plot-{shape}.png", dpi=110)
    _shot_file = tmp_path / f"plot-{shape}.png"
    assert _shot_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
