"""A circuit in a notebook: Circuit.load, top_edges, to_networkx, plot, _repr_html_."""

import html
import io
import re

import matplotlib

matplotlib.use("Agg")

import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import tiny  # noqa: E402
from conftest import token_rows  # noqa: E402
from discovery import Circuit, discover, task_from_rows, wrap_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def circuit(tmp_path_factory):
    lm = wrap_model(tiny.build("gpt2", seed=5))
    task = task_from_rows(token_rows(n=4, seed=3), vocab_size=tiny.VOCAB)
    c = discover(lm, task, "eap", top_n=40, curve=False)
    path = tmp_path_factory.mktemp("nb") / "c.json"
    c.save(path)
    return Circuit.load(path)


def test_load_reads_back_what_was_saved(circuit, tmp_path):
    circuit.save(tmp_path / "again.json")
    again = Circuit.load(tmp_path / "again.json")
    assert again == circuit and sum(e.in_circuit for e in again.edges) == circuit.metrics.n_edges > 0


def test_top_edges_by_absolute_and_signed_score(circuit):
    scores = np.array([e.score for e in circuit.edges])
    top = circuit.top_edges(5)
    assert [e.name for e in top] == [circuit.edges[i].name for i in np.argsort(-np.abs(scores), kind="stable")[:5]]
    signed = circuit.top_edges(3, signed=True)  # logit_diff: the most negative change is the most important
    assert [e.score for e in signed] == sorted(scores)[:3]
    inside = circuit.top_edges(1000, in_circuit=True)
    assert len(inside) == circuit.metrics.n_edges and all(e.in_circuit for e in inside)
    assert circuit.top_edges(0) == []


def test_to_networkx_has_one_node_per_component_and_slots_on_edges(circuit):
    g = circuit.to_networkx()
    assert set(g.nodes) == {n.id for n in circuit.nodes}
    assert not any("<" in n for n in g.nodes)  # no per-slot reader nodes
    kept = [e for e in circuit.edges if e.in_circuit]
    assert g.number_of_edges() == len(kept)
    pairs = [(e.source, e.target) for e in kept]
    assert g.is_multigraph() == (len(set(pairs)) < len(pairs))
    for e in kept:
        data = g.get_edge_data(e.source, e.target)
        data = data[e.slot] if g.is_multigraph() else data
        assert data["name"] == e.name and data["slot"] == e.slot and data["score"] == e.score
    assert g.nodes["a1.h0"]["kind"] == "attention" and g.nodes["a1.h0"]["layer"] == 1
    everything = circuit.to_networkx(all_edges=True)
    assert everything.is_multigraph() and everything.number_of_edges() == len(circuit.edges)
    # several slots join input -> a0.h0 (q, k, v): three keyed edges between one pair
    assert set(everything["input"]["a0.h0"]) == {"q", "k", "v"}
    assert "<graphml" in "".join(nx.generate_graphml(everything))  # scalar attributes only


def test_a_digraph_when_every_pair_has_one_slot(circuit):
    c = circuit.model_copy(deep=True)
    seen = set()
    for e in c.edges:
        e.in_circuit = e.in_circuit and (e.source, e.target) not in seen
        seen.add((e.source, e.target)) if e.in_circuit else None
    g = c.to_networkx()
    assert type(g) is nx.DiGraph and g.number_of_edges() == sum(e.in_circuit for e in c.edges)


def test_plot_draws_each_circuit_edge_between_its_components(circuit):
    from matplotlib.collections import LineCollection

    ax = circuit.plot()
    lines = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(lines) == 1 and len(lines[0].get_segments()) == circuit.metrics.n_edges
    widths = lines[0].get_linewidths()
    kept = [e for e in circuit.edges if e.in_circuit]
    strongest = int(np.argmax([abs(e.score) for e in kept]))
    assert widths[strongest] == max(widths)
    labels = {t.get_text() for t in ax.texts}
    assert labels == {n.id for n in circuit.nodes if n.in_circuit}
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png")
    assert buf.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_repr_html_embeds_the_viewer_page_in_its_own_frame(circuit):
    from viewer import render_circuit

    text = circuit._repr_html_()
    srcdoc = re.fullmatch(r'<iframe srcdoc="([^"]*)" [^>]*></iframe>', text, re.S)
    assert srcdoc is not None
    assert html.unescape(srcdoc.group(1)) == render_circuit(circuit)


def test_repr_html_renders_in_a_browser(circuit, tmp_path):
    pw = pytest.importorskip("playwright.sync_api")
    from viewer_browser import Page, chromium_path, launch

    if chromium_path() is None:
        pytest.skip("no chromium binary")
    notebook = tmp_path / "notebook.html"
    notebook.write_text(f"<html><body><div id='app'>the notebook's own #app</div>{circuit._repr_html_()}</body></html>")
    with pw.sync_playwright() as p:
        browser = launch(p)
        page = Page(browser)
        page.goto(notebook.as_uri())
        frame = page.frame_locator("iframe")
        frame.locator("#nodes .node").first.wait_for()
        assert frame.locator("#edges path").count() == circuit.metrics.n_edges
        assert page.locator("#app").inner_text() == "the notebook's own #app"
        assert page.errors == []
        browser.close()


def test_node_circuits_in_a_notebook():
    lm = wrap_model(tiny.build("gpt2", seed=5))
    task = task_from_rows(token_rows(n=4, seed=3), vocab_size=tiny.VOCAB)
    c = discover(lm, task, "eap", level="node", top_n=4, curve=False)
    scores = {n.id: n.score for n in c.nodes if n.score is not None}
    top = c.top_nodes(4)
    assert [n.id for n in top] == sorted(scores, key=lambda i: -abs(scores[i]))[:4]
    assert {n.id for n in top} == {n.id for n in c.nodes if n.in_circuit} - {"logits"}
    assert c.top_edges(5) == []  # edges carry no scores at the node level
    g = c.to_networkx()
    assert g.nodes[top[0].id]["score"] == top[0].score
    assert all(g.nodes[u]["in_circuit"] and g.nodes[v]["in_circuit"] for u, v in g.edges())
    ax = c.plot()
    markers = [col for col in ax.collections if col.get_offsets().shape[0] == 5]  # 4 nodes + logits
    assert markers and len(set(np.round(markers[0].get_sizes(), 6))) > 1  # sized by |score|
