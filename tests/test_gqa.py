"""Grouped-query models: k/v edges per query head (the default, MIB's names) and grouped (kv_edges="grouped").

The hand-written reference below runs a Llama/Qwen2/Mistral model from its own HF modules (the
library's repeat_kv and rotary helpers), with one query head's key or value input replaced."""

import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

import tiny
from conftest import token_rows
from discovery import Circuit, Graph, Setup, discover, evaluate, get_metric, run, score_edges, task_from_rows
from discovery.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
GQA = ["llama", "qwen2", "mistral"]  # 4 query heads over 2, 1 and 2 key/value heads


def hand_forward(model, ids, patch=None):
    """Logits [N, P, V] and each head's write to the residual {(layer, head): [N, P, d]}.

    patch = (layer, head, slot, delta): query head `head` of `layer` computes its key (slot "k") or
    value ("v") from residual - delta through its group's k/v projection; every other head, and its
    query, read the residual as it is."""
    m, cfg = model.model, model.config
    n, p = ids.shape
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    dh = cfg.hidden_size // H
    x = m.embed_tokens(ids)
    cos, sin = m.rotary_emb(x, torch.arange(p)[None])
    i = torch.arange(p)
    allowed = i[None, :] <= i[:, None]
    window = getattr(cfg, "sliding_window", None) if cfg.model_type == "mistral" else None
    if window is not None:
        allowed &= i[None, :] > i[:, None] - window
    writes = {}
    for L, layer in enumerate(m.layers):
        attn = layer.self_attn
        xn = layer.input_layernorm(x)
        q = attn.q_proj(xn).view(n, p, H, dh).transpose(1, 2)
        k = repeat_kv(attn.k_proj(xn).view(n, p, KV, dh).transpose(1, 2), H // KV).clone()
        v = repeat_kv(attn.v_proj(xn).view(n, p, KV, dh).transpose(1, 2), H // KV).clone()
        if patch is not None and patch[0] == L:
            _, head, slot, delta = patch
            proj = attn.k_proj if slot == "k" else attn.v_proj
            own = proj(layer.input_layernorm(x - delta)).view(n, p, KV, dh).transpose(1, 2)[:, head // (H // KV)]
            (k if slot == "k" else v)[:, head] = own
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        scores = (q @ k.transpose(-1, -2)) * attn.scaling
        scores = scores.masked_fill(~allowed, float("-inf"))
        z = torch.softmax(scores, dim=-1) @ v  # [n, H, p, dh]
        w_o = attn.o_proj.weight  # [d, H * dh]
        for h in range(H):
            writes[(L, h)] = z[:, h] @ w_o[:, h * dh:(h + 1) * dh].T
        x = x + sum(writes[(L, h)] for h in range(H))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(m.norm(x)), writes


@pytest.fixture(scope="module")
def rows():
    return token_rows(n=3, seed=4)


@pytest.fixture(scope="module")
def task(rows):
    return task_from_rows(rows, vocab_size=tiny.VOCAB)


@pytest.mark.parametrize("family", GQA)
def test_hand_forward_is_the_model(models, family):
    ids = torch.tensor([r["clean_ids"] for r in token_rows(n=3, seed=4)])
    with torch.no_grad():
        torch.testing.assert_close(hand_forward(models[family].hf_model, ids)[0], models[family].hf_model(ids).logits,
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", GQA)
@pytest.mark.parametrize("kv_edges", ["head", "grouped"])
def test_all_edges_kept_is_the_model_and_none_kept_is_corrupted(models, family, kv_edges):
    lm = models[family]
    a, g = lm.adapter, Graph.from_adapter(lm.adapter, kv_edges=kv_edges)
    assert g.n_kv_readers == (4 if kv_edges == "head" else a.n_kv_heads)
    gen = torch.Generator().manual_seed(1)
    clean, corrupted = (torch.randint(0, tiny.VOCAB, (3, 7), generator=gen) for _ in range(2))
    with torch.no_grad():
        hf_clean, hf_corrupted = lm.hf_model(clean).logits, lm.hf_model(corrupted).logits
        ref = run(a, g, corrupted, record=True).acts
        kept = run(a, g, clean, ref=ref, off=torch.zeros(1, g.n_sources, g.n_readers)).logits
        none = run(a, g, clean, ref=ref, off=torch.as_tensor(g.valid, dtype=torch.float32)[None]).logits
        # every edge kept but one key edge of one head: the patched (per-reader) path, not the fused one
        one = torch.zeros(1, g.n_sources, g.n_readers)
        one[0, g.source_index["a0.h1"], g.reader_index[f"a1.{'h3' if kv_edges == 'head' else 'kv0'}<k>"]] = 1e-30
        almost = run(a, g, clean, ref=ref, off=one).logits
    assert (hf_clean - hf_corrupted).abs().max() > 0.5
    torch.testing.assert_close(kept, hf_clean, atol=1e-4, rtol=0)
    torch.testing.assert_close(none, hf_corrupted, atol=1e-4, rtol=0)
    torch.testing.assert_close(almost, hf_clean, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", GQA)
def test_exact_per_head_edge_equals_a_rerun_with_only_that_heads_input_changed(models, family, rows, task):
    lm = models[family]
    model = lm.hf_model
    scores = score_edges(Setup(lm, task, get_metric("logit_diff"), batch_size=4), "exact")
    grouped = score_edges(Setup(lm, task, get_metric("logit_diff"), batch_size=4, kv_edges="grouped"), "exact")
    g, gg = Graph.from_adapter(lm.adapter), Graph.from_adapter(lm.adapter, kv_edges="grouped")
    clean = torch.tensor([r["clean_ids"] for r in rows])
    corrupted = torch.tensor([r["corrupted_ids"] for r in rows])
    ans, wrong = torch.tensor([r["answer_id"] for r in rows]), torch.tensor([r["wrong_id"] for r in rows])

    def metric(logits):
        last = logits[:, -1]
        return (last[torch.arange(3), ans] - last[torch.arange(3), wrong]).mean().item()

    with torch.no_grad():
        base_logits, clean_w = hand_forward(model, clean)
        _, corr_w = hand_forward(model, corrupted)
        base = metric(base_logits)
        embed_delta = model.model.embed_tokens(clean) - model.model.embed_tokens(corrupted)
        effects = []
        for src, head, slot in [("a0.h1", 3, "k"), ("a0.h2", 2, "v"), ("input", 0, "k"), ("a0.h0", 1, "v"),
                                ("input", 3, "v")]:
            delta = embed_delta if src == "input" else clean_w[(0, int(src[-1]))] - corr_w[(0, int(src[-1]))]
            patched = metric(hand_forward(model, clean, (1, head, slot, delta))[0])
            got = scores[g.edge_index[f"{src}->a1.h{head}<{slot}>"]].item()
            assert got == pytest.approx(patched - base, abs=1e-5)
            kv = head // (4 // lm.adapter.n_kv_heads)
            # the grouped edge switches every head of the group: a different number
            effects.append((abs(patched - base), abs(grouped[gg.edge_index[f"{src}->a1.kv{kv}<{slot}>"]].item() - got)))
    assert max(e for e, _ in effects) > 3e-3 and max(d for _, d in effects) > 3e-3  # 300x the tolerance


@pytest.mark.parametrize("family", GQA)
@pytest.mark.parametrize("method", ["eap", "eap-ig", "eap-ig-activations"])
def test_per_head_gradient_scores_of_a_group_sum_to_the_grouped_score(models, task, family, method):
    lm = models[family]
    per_head = score_edges(Setup(lm, task, get_metric("logit_diff"), batch_size=4), method, steps=3).numpy()
    grouped = score_edges(Setup(lm, task, get_metric("logit_diff"), batch_size=4, kv_edges="grouped"), method,
                          steps=3).numpy()
    g, gg = Graph.from_adapter(lm.adapter), Graph.from_adapter(lm.adapter, kv_edges="grouped")
    size = g.group_size
    checked = 0
    for e, name in enumerate(gg.edge_names):
        src, reader = name.split("->")
        if ".kv" not in reader:  # q, MLP and logits edges are the same edges in both graphs
            assert per_head[g.edge_index[name]] == pytest.approx(grouped[e], rel=1e-4, abs=1e-6)
            continue
        layer, rest = reader[1:].split(".kv")
        grp, slot = int(rest[0]), rest[-2]
        parts = [per_head[g.edge_index[f"{src}->a{layer}.h{h}<{slot}>"]] for h in range(grp * size, (grp + 1) * size)]
        assert sum(parts) == pytest.approx(grouped[e], rel=1e-4, abs=1e-6)
        checked += 1
    assert checked == 2 * sum(1 + layer * 5 for layer in range(2)) * lm.adapter.n_kv_heads
    assert np.abs(grouped).max() > 1e-3


def test_discover_names_edges_per_query_head_and_evaluates_both_kinds_of_files(models, task, tmp_path):
    lm = models["llama"]
    c = discover(lm, task, "eap", top_n=15, curve=False)
    assert c.method.params["kv_edges"] == "head" and c.kv_edges == "head"
    assert not any(".kv" in e.name for e in c.edges) and all(n.kind != "kv_head" for n in c.nodes)
    assert len(c.edges) == Graph(2, 4).n_edges
    c.save(tmp_path / "head.json")
    again = evaluate(lm, task, Circuit.load(tmp_path / "head.json"))
    assert again["circuit"] == pytest.approx(c.metrics.circuit, abs=1e-6)

    grouped = discover(lm, task, "eap", top_n=15, curve=False, kv_edges="grouped")
    assert grouped.kv_edges == "grouped" and any(e.name == "a0.h1->a1.kv1<k>" for e in grouped.edges)
    assert any(n.kind == "kv_head" for n in grouped.nodes)
    old = grouped.model_copy(deep=True)  # a file from before kv_edges was recorded: grouped names
    del old.method.params["kv_edges"]
    old.save(tmp_path / "old.json")
    assert Circuit.load(tmp_path / "old.json").kv_edges == "grouped"
    assert evaluate(lm, task, Circuit.load(tmp_path / "old.json"))["circuit"] == pytest.approx(
        grouped.metrics.circuit, abs=1e-6)


def test_cli_kv_edges_grouped(models, tmp_path, capsys):
    lm = models["qwen2"]
    lm.hf_model.save_pretrained(tmp_path / "m")
    (tmp_path / "t.jsonl").write_text("\n".join(__import__("json").dumps(r) for r in token_rows(n=2)))
    for mode in ("head", "grouped"):
        out = tmp_path / f"{mode}.json"
        assert main(["discover", "--model", str(tmp_path / "m"), "--task", str(tmp_path / "t.jsonl"), "--method", "eap",
                     "--no-curve", "--quiet", "--kv-edges", mode, "--device", "cpu", "--out", str(out)]) == 0
        c = Circuit.load(out)
        assert c.kv_edges == mode and any(".kv0<v>" in e.name for e in c.edges) == (mode == "grouped")
    assert main(["discover", "--model", str(tmp_path / "m"), "--task", str(tmp_path / "t.jsonl"), "--kv-edges",
                 "query", "--out", str(tmp_path / "x.json")]) == 2
    assert "--kv-edges" in capsys.readouterr().err
