"""Position-aware edges (discovery/engine/positions.py): counts, the patched forward's end points, scores that
sum to the non-positional ones, exact patching against a hand-written re-run, pruning, the file."""

from discovery.core.circuit import SCHEMA_VERSION
import json

import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

import tiny
from conftest import token_rows
from discovery import Circuit, Graph, Setup, UserError, discover, evaluate, get_metric, run, score_edges, task_from_rows
from discovery.core import circuit as circuit_module
from discovery.cli import main
from discovery.engine.positions import PositionalGraph
from discovery.pipeline.selection import prune

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def rows():
    return token_rows(n=3, seed=4)


@pytest.fixture(scope="module")
def task(rows):
    return task_from_rows(rows, vocab_size=tiny.VOCAB)


def _setup(lm, task, **kw):
    return Setup(lm, task, get_metric("logit_diff"), batch_size=4, **kw)


def test_edge_counts_match_a_hand_count():
    p = 6
    g = PositionalGraph(Graph(2, 4), p)
    # base edges: q, k, v readers of layer 0 read 1 source (input), of layer 1 six (input, 4 heads, m0);
    # m0 reads 5, m1 10, the logits 11. q, MLP: one pair per position; k, v: every i <= j (21 of 36);
    # logits: the last position only.
    q = (4 * 1 + 4 * 6) * p
    kv = 2 * (4 * 1 + 4 * 6) * (p * (p + 1) // 2)
    mlp = (5 + 10) * p
    assert g.n_edges == q + kv + mlp + 11 == 1445
    assert g.base_scores(np.ones(g.n_edges)).tolist() == [
        {"q": p, "k": 21, "v": 21, "mlp": p, "logits": 1}[g.reader_slot[d]] for d in Graph(2, 4).edge_dst]
    names = set(g.edge_names)
    assert {"input[2]->a0.h1<k>[5]", "a0.h3[1]->a1.h0<v>[1]", "a0.h2[3]->a1.h2<q>[3]", "m1[5]->logits[5]",
            "a1.h0[4]->m1[4]"} <= names
    assert not {"input[5]->a0.h1<k>[2]", "a0.h2[3]->a1.h2<q>[4]", "m1[4]->logits[4]", "a1.h0[3]->m1[4]"} & names
    # a sliding window of 3 (Mistral): key positions j-2..j only: 15 pairs of 36
    w = PositionalGraph(Graph(2, 4, n_kv_heads=2), p, windows=[3, 3])
    assert w.n_edges == q + 2 * (4 * 1 + 4 * 6) * 15 + mlp + 11
    assert "input[2]->a0.h1<k>[5]" not in set(w.edge_names) and "input[3]->a0.h1<k>[5]" in set(w.edge_names)


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama", "mistral"])
def test_all_positional_edges_kept_is_clean_and_none_kept_is_corrupted(models, task, family):
    lm = models[family]
    setup = _setup(lm, task, positions=True)
    g = setup.graph
    batch = next(iter(setup.batches()))
    ref = setup.reference(batch)
    valid = torch.as_tensor(g.valid, dtype=torch.float32)[None]
    with torch.no_grad():
        hf_clean = lm.hf_model(batch.clean).logits[:, -1]
        hf_corrupted = lm.hf_model(batch.corrupted).logits[:, -1]
        go = lambda off: run(lm.adapter, g, batch.clean, last=batch.clean_last, ref=ref, off=off).logits  # noqa: E731
        kept, none, almost = go(torch.zeros_like(valid)), go(valid), go(valid * 1e-30)  # almost: the patched path
    assert (hf_clean - hf_corrupted).abs().max() > 0.1
    torch.testing.assert_close(kept, hf_clean, atol=1e-4, rtol=0)
    torch.testing.assert_close(none, hf_corrupted, atol=1e-4, rtol=0)
    torch.testing.assert_close(almost, hf_clean, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral"])
@pytest.mark.parametrize("method", ["eap", "eap-ig", "clean-corrupted", "eap-ig-activations"])
def test_summed_positional_scores_equal_the_non_positional_ones(models, task, family, method):
    lm = models[family]
    setup = _setup(lm, task, positions=True)
    positional = score_edges(setup, method, steps=3).numpy()
    plain = score_edges(_setup(lm, task), method, steps=3).numpy()
    assert positional.shape == (setup.graph.n_edges,) and np.abs(plain).max() > 1e-2
    np.testing.assert_allclose(setup.graph.base_scores(positional), plain, rtol=1e-4, atol=1e-6)
    # not one position's worth copied: the k/v scores are spread over several position pairs
    kv = np.isin(np.array(setup.graph.reader_slot)[setup.graph.edge_dst], ["k", "v"])
    assert (np.abs(positional[kv]) > 1e-6).sum() > (np.abs(plain) > 1e-6).sum()


def hand_forward(model, ids, patch=None):
    """A Llama-family forward from the model's own modules, with each query position's own keys and
    values, and the per-head writes {(layer, head): [N, P, d]}. patch = (layer, head, slot, delta,
    src_pos, dst_pos): slot "q": head's query at dst_pos from (residual - delta); "k"/"v": the key
    (value) that head's query at dst_pos uses at key position src_pos from (residual - delta);
    "mlp": the layer's MLP input at dst_pos from (residual - delta)."""
    m, cfg = model.model, model.config
    n, p = ids.shape
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    dh = cfg.hidden_size // H
    x = m.embed_tokens(ids)
    cos, sin = m.rotary_emb(x, torch.arange(p)[None])
    i = torch.arange(p)
    allowed = i[None, :] <= i[:, None]
    writes = {}
    for L, layer in enumerate(m.layers):
        attn = layer.self_attn
        here = patch if patch is not None and patch[0] == L else None

        def qkv(inp):
            xn = layer.input_layernorm(inp)
            q = attn.q_proj(xn).view(n, p, H, dh).transpose(1, 2)
            k = repeat_kv(attn.k_proj(xn).view(n, p, KV, dh).transpose(1, 2), H // KV)
            v = repeat_kv(attn.v_proj(xn).view(n, p, KV, dh).transpose(1, 2), H // KV)
            return apply_rotary_pos_emb(q, k, cos, sin) + (v,)

        q, k, v = qkv(x)
        kq = k[:, :, None].expand(n, H, p, p, dh).clone()  # [n, head, query j, key i, dh]
        vq = v[:, :, None].expand(n, H, p, p, dh).clone()
        if here is not None and here[2] in "qkv":
            _, head, slot, delta, src, dst = here
            pq, pk, pv = qkv(x - delta)
            if slot == "q":
                q = q.clone()
                q[:, head, dst] = pq[:, head, dst]
            else:
                (kq if slot == "k" else vq)[:, head, dst, src] = (pk if slot == "k" else pv)[:, head, src]
        scores = torch.einsum("nhjd,nhjid->nhji", q, kq) * attn.scaling
        z = torch.einsum("nhji,nhjid->nhjd", torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1), vq)
        w_o = attn.o_proj.weight
        for h in range(H):
            writes[(L, h)] = z[:, h] @ w_o[:, h * dh:(h + 1) * dh].T
        x = x + sum(writes[(L, h)] for h in range(H))
        mlp_in = x
        if here is not None and here[2] == "mlp":
            mlp_in = x.clone()
            mlp_in[:, here[5]] = (x - here[3])[:, here[5]]
        x = x + layer.mlp(layer.post_attention_layernorm(mlp_in))
    return model.lm_head(m.norm(x)), writes


def test_exact_positional_edge_equals_a_rerun_with_only_that_entry_changed(models, rows, task):
    lm = models["llama"]  # rotary, 4 query heads over 2 key/value heads (per-head k/v edges)
    model = lm.hf_model
    setup = _setup(lm, task, positions=True)
    scores = score_edges(setup, "exact").numpy()
    g = setup.graph
    clean = torch.tensor([r["clean_ids"] for r in rows])
    corrupted = torch.tensor([r["corrupted_ids"] for r in rows])
    ans, wrong = torch.tensor([r["answer_id"] for r in rows]), torch.tensor([r["wrong_id"] for r in rows])

    def metric(logits):
        last = logits[:, -1]
        return (last[torch.arange(3), ans] - last[torch.arange(3), wrong]).mean().item()

    with torch.no_grad():
        base_logits, clean_w = hand_forward(model, clean)
        torch.testing.assert_close(base_logits, model(clean).logits, atol=1e-4, rtol=0)
        _, corr_w = hand_forward(model, corrupted)
        base = metric(base_logits)
        embed_delta = model.model.embed_tokens(clean) - model.model.embed_tokens(corrupted)
        effects = []
        for name, (layer, head, slot) in [("input[2]->a1.h3<k>[5]", (1, 3, "k")), ("a0.h1[2]->a1.h2<v>[5]", (1, 2, "v")),
                                          ("a0.h0[2]->a1.h0<v>[4]", (1, 0, "v")), ("input[2]->a0.h1<q>[2]", (0, 1, "q")),
                                          ("a0.h2[2]->a1.h1<k>[3]", (1, 1, "k")), ("a1.h3[5]->m1[5]", (1, None, "mlp"))]:
            src_name = name.split("[")[0]
            src, dst = int(name.split("[")[1].split("]")[0]), int(name.rsplit("[", 1)[1].rstrip("]"))
            delta = embed_delta if src_name == "input" else (
                clean_w[(int(src_name[1]), int(src_name[-1]))] - corr_w[(int(src_name[1]), int(src_name[-1]))])
            patched = metric(hand_forward(model, clean, (layer, head, slot, delta, src, dst))[0])
            assert scores[g.edge_index[name]] == pytest.approx(patched - base, abs=1e-5), name
            effects.append(abs(patched - base))
    assert max(effects) > 3e-3  # 300x the tolerance: the checks are not vacuous


def test_prune_works_per_node_position():
    g = PositionalGraph(Graph(2, 4), 6)
    keep = np.zeros(g.n_edges, bool)
    for name in ["input[2]->a0.h1<v>[5]", "a0.h1[5]->logits[5]",  # a path: kept
                 "input[2]->a0.h1<v>[4]",  # into a0.h1 at 4, which writes nowhere kept: dropped
                 "a0.h2[5]->logits[5]",  # from a0.h2 at 5, which reads nothing kept: dropped
                 "input[1]->a0.h3<q>[1]", "a0.h3[1]->a1.h0<k>[5]", "a1.h0[5]->logits[5]"]:  # a cross-position path
        keep[g.edge_index[name]] = True
    kept = {g.edge_names[e] for e in np.flatnonzero(prune(g, keep))}
    assert kept == {"input[2]->a0.h1<v>[5]", "a0.h1[5]->logits[5]", "input[1]->a0.h3<q>[1]", "a0.h3[1]->a1.h0<k>[5]",
                    "a1.h0[5]->logits[5]"}
    # the same path ending at a position the logits do not read is dropped whole
    keep[:] = False
    for name in ["input[1]->a0.h3<q>[1]", "a0.h3[1]->a1.h0<k>[4]", "a1.h0[4]->m1[4]"]:
        keep[g.edge_index[name]] = True
    assert not prune(g, keep).any()


def test_discover_with_positions_writes_positions_and_evaluates_the_same(models, task, tmp_path, monkeypatch):
    lm = models["llama"]
    c = discover(lm, task, "eap", top_n=25, positions=True)
    g = _setup(lm, task, positions=True).graph
    assert c.positions.n == 6 and c.positions.n_edges == g.n_edges == len(c.edges) == c.positions.listed
    assert c.method.params["positions"] is True and c.schema_version == SCHEMA_VERSION
    kept = [e for e in c.edges if e.in_circuit]
    assert 0 < len(kept) <= 25 and all(e.src_pos <= e.dst_pos for e in c.edges)
    assert all(e.name == f"{e.source}[{e.src_pos}]->{e.name.split('->')[1]}" for e in c.edges)
    assert c.metrics.curve_signed and c.metrics.n_edges == len(kept)
    c.save(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert {"src_pos", "dst_pos"} <= set(data["edges"][0]) and data["positions"]["n"] == 6
    again = evaluate(lm, task, Circuit.load(tmp_path / "p.json"))
    assert again["circuit"] == pytest.approx(c.metrics.circuit, abs=1e-6)
    # a plain circuit has no position fields at all
    plain = json.loads(discover(lm, task, "eap", top_n=25, curve=False).model_dump_json())
    assert "positions" not in plain and "src_pos" not in plain["edges"][0]

    # a large positional graph lists its circuit's edges and the highest |score| up to the cap
    monkeypatch.setattr(circuit_module, "POSITIONAL_EDGES_LISTED", 100)
    small = discover(lm, task, "eap", top_n=25, positions=True, curve=False)
    assert len(small.edges) == small.positions.listed == 100 and small.positions.n_edges == g.n_edges
    assert sum(e.in_circuit for e in small.edges) == sum(e.in_circuit for e in c.edges)
    assert evaluate(lm, task, small)["circuit"] == pytest.approx(c.metrics.circuit, abs=1e-6)


def test_rows_that_do_not_share_a_layout_are_one_line_errors(models, tmp_path, capsys):
    lm = models["gpt2"]
    rows = token_rows(n=2) + token_rows(n=1, length=5, seed=3)
    with pytest.raises(UserError, match="row 3 has 5/5 clean/corrupted tokens and row 1 has 6"):
        _setup(lm, task_from_rows(rows, vocab_size=tiny.VOCAB), positions=True)
    with pytest.raises(UserError, match="one process"):
        score_edges(_setup(lm, task_from_rows(token_rows(n=2), vocab_size=tiny.VOCAB), positions=True), "eap",
                    workers=object())
    for kw, msg in [({"method": "acdc"}, "positions works with the scoring methods"),
                    ({"position_names": ["a"] * 6, "positions": None}, "position_names needs positions"),
                    ({"position_names": ["a"] * 5}, "5 position names given for prompts of 6 tokens"),
                    ({"greedy": 5}, "greedy"), ({"workers": 2}, "drop --workers")]:
        with pytest.raises(UserError, match=msg):
            discover(lm, task_from_rows(token_rows(n=2), vocab_size=tiny.VOCAB), **{"positions": True, **kw})
    lm.hf_model.save_pretrained(tmp_path / "m")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    capsys.readouterr()  # the weights' saving bar
    code = main(["discover", "--model", str(tmp_path / "m"), "--task", str(tmp_path / "t.jsonl"), "--positions",
                 "--method", "eap", "--quiet", "--device", "cpu", "--out", str(tmp_path / "c.json")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "share one token layout" in err


def test_viewer_shows_an_edges_positions(models, task, tmp_path):
    pw = pytest.importorskip("playwright.sync_api")
    from viewer_browser import Page, chromium_path, launch

    if chromium_path() is None:
        pytest.skip("no chromium binary")
    names = ["BOS", "A", "X", "B", "C", "END"]
    c = discover(models["llama"], task, "eap", top_n=12, positions=True, curve=False, position_names=names)
    assert c.positions.names == names
    c.save(tmp_path / "p.json")
    assert main(["view", str(tmp_path / "p.json"), "--out", str(tmp_path / "v.html")]) == 0
    kept = [e for e in c.edges if e.in_circuit]
    with pw.sync_playwright() as p:
        browser = launch(p)
        page = Page(browser)
        page.goto((tmp_path / "v.html").as_uri())
        page.wait_for_selector("#nodes .node")
        assert page.locator("#edges path").count() == len(kept)
        first = page.locator("#edges path").first
        name = first.get_attribute("data-name")
        edge = next(e for e in kept if e.name == name)
        first.dispatch_event("mouseenter")
        assert (f"positions {edge.src_pos} ({names[edge.src_pos]}) \u2192 {edge.dst_pos} ({names[edge.dst_pos]})"
                in page.locator("#hover").inner_text())
        assert page.errors == []
        browser.close()


def test_positional_masks_split_over_forwards_give_the_same_metrics(models, task, monkeypatch):
    from discovery import circuit_metrics
    from discovery.pipeline.evaluation import forget
    from discovery.methods import common

    setup = _setup(models["llama"], task, positions=True)
    rng = np.random.default_rng(0)
    circuits = [rng.random(setup.graph.n_edges) < f for f in (0.1, 0.5, 0.9)]
    whole = circuit_metrics(setup, circuits)
    monkeypatch.setattr(common, "POSITIONAL_MASK_BYTES", 1)  # one mask per forward
    forget(setup)  # evaluate again, not from the evaluation memo
    np.testing.assert_allclose(circuit_metrics(setup, circuits), whole, rtol=0, atol=1e-6)
    assert np.ptp(whole) > 1e-3


def test_cli_discover_and_evaluate_with_positions(models, tmp_path, capsys):
    models["qwen2"].hf_model.save_pretrained(tmp_path / "m")
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in token_rows(n=2)))
    base = ["--model", str(tmp_path / "m"), "--task", str(tmp_path / "t.jsonl"), "--device", "cpu", "--quiet"]
    assert main(["discover", *base, "--method", "eap", "--positions", "--position-names", "a,b,x,c,d,end",
                 "--top-n", "20", "--no-curve", "--out", str(tmp_path / "c.json")]) == 0
    c = Circuit.load(tmp_path / "c.json")
    assert c.positions.names == ["a", "b", "x", "c", "d", "end"] and all(e.src_pos is not None for e in c.edges)
    capsys.readouterr()
    assert main(["evaluate", *base, "--circuit", str(tmp_path / "c.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["circuit"] == pytest.approx(c.metrics.circuit, abs=1e-6)
    assert main(["discover", *base, "--position-names", "a,b", "--out", str(tmp_path / "x.json")]) == 2
    assert "position_names needs positions" in capsys.readouterr().err


@pytest.mark.parametrize("kv_edges,intervention", [("grouped", "patching"), ("head", "mean"), ("head", "zero")])
def test_positions_with_grouped_kv_edges_and_other_interventions(models, task, kv_edges, intervention):
    lm = models["llama"]
    setup = _setup(lm, task, positions=True, kv_edges=kv_edges, intervention=intervention)
    plain_setup = _setup(lm, task, kv_edges=kv_edges, intervention=intervention)
    g = setup.graph
    assert g.base.n_edges == plain_setup.graph.n_edges
    assert any(".kv0<k>" in n for n in g.edge_names) == (kv_edges == "grouped")
    positional = score_edges(setup, "eap").numpy()
    plain = score_edges(plain_setup, "eap").numpy()
    np.testing.assert_allclose(g.base_scores(positional), plain, rtol=1e-4, atol=1e-6)
    full, empty = np.ones(g.n_edges, bool), np.zeros(g.n_edges, bool)
    from discovery import circuit_metrics
    pos_values = circuit_metrics(setup, [full, empty])
    plain_values = circuit_metrics(plain_setup, [np.ones(plain_setup.graph.n_edges, bool),
                                                 np.zeros(plain_setup.graph.n_edges, bool)])
    np.testing.assert_allclose(pos_values, plain_values, rtol=0, atol=1e-5)  # same clean and ablated model


def test_a_positional_circuit_can_be_labeled_and_diffed(models, task, tmp_path):
    from labeling import label_circuit
    from discovery.io.diff import diff_circuits

    lm = models["llama"]
    c = discover(lm, task, "eap", top_n=20, positions=True, curve=False)
    assert c.graph_for(lm.adapter).n_edges == c.positions.n_edges
    labeled = label_circuit(c, lm, task)
    assert labeled.positions == c.positions and {r.component for r in labeled.labels}
    other = discover(lm, task, "eap", top_n=10, positions=True, curve=False)
    d = diff_circuits(c, other)
    assert d.edges_lost and all("[" in e.name for e in d.edges_lost)
