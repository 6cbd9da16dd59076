import networkx as nx
import numpy as np

from discovery import Graph


def test_gpt2_small_shape_has_32491_edges_with_mib_names():
    g = Graph(12, 12)
    assert g.n_edges == 32491
    names = set(g.edge_names)
    for name in ["input->a0.h1<q>", "a0.h3->a2.h0<v>", "a1.h2->m3", "m3->logits", "input->logits",
                 "a0.h0->m0", "m10->a11.h11<k>"]:
        assert name in names
    assert "a2.h0->a2.h1<q>" not in names  # no edges within a layer's attention
    assert "m3->a3.h0<q>" not in names  # an MLP writes after its layer's attention reads


def test_edge_count_formula_and_parallel_residual():
    L, H = 3, 4
    seq, par = Graph(L, H), Graph(L, H, parallel=True)
    readers_q = 3 * H * sum(1 + l * (H + 1) for l in range(L))
    mlp_seq = sum(1 + l * (H + 1) + H for l in range(L))
    mlp_par = sum(1 + l * (H + 1) for l in range(L))
    logits = 1 + L * (H + 1)
    assert seq.n_edges == readers_q + mlp_seq + logits
    assert par.n_edges == readers_q + mlp_par + logits
    assert "a1.h0->m1" in seq.edge_index and "a1.h0->m1" not in par.edge_index


def test_grouped_query_k_v_edges_are_per_query_head_by_default():
    g = Graph(2, 4, n_kv_heads=2)
    # MIB / EAP-IG names: every query head has its own k and v readers, no key/value nodes
    assert "a0.h1->a1.h3<k>" in g.edge_index and "a0.h1->a1.h0<v>" in g.edge_index
    assert not any(".kv" in name for name in g.edge_names) and not any(".kv" in n for n in g.node_ids())
    assert g.kv_edges == "head" and g.gqa and not g.grouped and g.kv_weight_heads() == [0, 0, 1, 1]
    # the same count as a model without GQA: n_edges(L=2, H=4) by the formula below
    assert g.n_edges == Graph(2, 4).n_edges == 3 * 4 * (1 + 6) + (1 + 4) + (6 + 4) + 11
    assert g.edge_names == Graph(2, 4).edge_names


def test_grouped_query_readers_belong_to_key_value_heads():
    g = Graph(2, 4, n_kv_heads=2, kv_edges="grouped")
    assert "a0.h1->a1.kv0<k>" in g.edge_index and "a0.h1->a1.h0<k>" not in g.edge_index
    assert g.n_readers == 2 * (4 + 2 + 2 + 1) + 1
    nodes = g.node_ids()
    assert "a1.kv1" in nodes and g.node_info("a1.kv1") == {"id": "a1.kv1", "kind": "kv_head", "layer": 1, "head": 1}


def test_grouped_edge_count():
    g = Graph(2, 4, n_kv_heads=2, kv_edges="grouped")
    # per layer: q readers 4, k and v readers 2 each (8 attention readers instead of 12)
    assert g.n_edges == (4 + 2 + 2) * (1 + 6) + (1 + 4) + (6 + 4) + 11
    assert g.kv_weight_heads() == [0, 1]


def test_to_networkx_has_every_edge_once_with_attributes():
    g = Graph(2, 4, n_kv_heads=2, kv_edges="grouped")
    scores = np.arange(g.n_edges, dtype=float)
    keep = scores % 3 == 0
    G = g.to_networkx(scores=scores, in_circuit=keep)
    assert isinstance(G, nx.DiGraph) and nx.is_directed_acyclic_graph(G)
    real = [(u, v, a) for u, v, a in G.edges(data=True) if not a["internal"]]
    assert len(real) == g.n_edges
    by_name = {a["name"]: a for _, _, a in real}
    e = g.edge_index["a0.h1->a1.kv0<k>"]
    assert by_name["a0.h1->a1.kv0<k>"]["score"] == scores[e]
    assert by_name["a0.h1->a1.kv0<k>"]["in_circuit"] == keep[e]
    assert G.nodes["a1.h3"]["kind"] == "attention" and G.nodes["m0"]["layer"] == 0
    # the key/value head of group 0 feeds query heads 0 and 1 only
    assert set(G.successors("a1.kv0")) == {"a1.h0", "a1.h1"}
    nx.write_graphml(G, "/dev/null")  # scalar attributes only
