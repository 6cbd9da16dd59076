"""Planted circuits (discovery/toy/planted.py): the ground truth holds by an independent measurement,
the true edge set is right, and the exact method sees nothing outside the circuit at noise 0."""

import json

import numpy as np
import pytest
import torch

from discovery import Graph, Setup, UserError, get_metric, load_model, load_task, score_edges
from discovery.toy.planted import plant


def roc_auc(scores, labels) -> float:
    """Probability that a random positive outranks a random negative (ties count half)."""
    s, y = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg)))


@pytest.mark.parametrize("family", ["gpt2", "llama", "neox"])
def test_ground_truth_holds_by_independent_ablation(family):
    """Ablating (patching with its corrupted output, by a hook on the HF module) a non-circuit component
    changes the metric by less than the noise bound; a circuit component by clearly more."""
    for noise in (0.0, 0.01, 0.1):
        p = plant(family, None, noise, seed=1, n_rows=8)
        effects, bound = p.ablation_effects(), p.noise_bound()
        noise_nodes = [c for c, role in p.node_roles().items() if role == "noise"]
        assert len(noise_nodes) == len(effects) - len(p.circuit) > 0
        for c in noise_nodes:
            assert abs(effects[c]) <= bound + 1e-6, (noise, c, effects[c], bound)
        if noise == 0.01:
            for c in p.circuit:
                assert abs(effects[c]) > 3 * bound, (c, effects[c], bound)
    # The bound is not vacuous: unplanted (noise 1), some non-circuit component exceeds the 0.01 bound.
    full = plant(family, None, 1.0, seed=1, n_rows=8)
    assert max(abs(v) for c, v in full.ablation_effects().items() if c not in full.circuit) > 0.02 * max(
        abs(v) for v in full.circuit_effects.values())


def test_true_edges_match_a_hand_count():
    # GPT-2, sequential: a0.h1 reads input (q, k, v: 3); a1.h2 reads input and a0.h1 (2 x 3 = 6);
    # m1 reads input, a0.h1, a1.h2 (3); the logits read input, a0.h1, a1.h2, m1 (4). 16 in all.
    p = plant("gpt2", ["m1", "a1.h2", "a0.h1", "a0.h1"], 0.0, seed=0, n_layers=2, n_rows=2)
    assert p.circuit == ("a0.h1", "a1.h2", "m1")  # deduplicated, in source order
    expected = {f"input->a0.h1<{s}>" for s in "qkv"} | {f"{src}->a1.h2<{s}>" for src in ("input", "a0.h1") for s in "qkv"}
    expected |= {f"{src}->m1" for src in ("input", "a0.h1", "a1.h2")}
    expected |= {f"{src}->logits" for src in ("input", "a0.h1", "a1.h2", "m1")}
    assert len(expected) == 16 and set(p.true_edge_names()) == expected
    assert p.true_edges().sum() == 16 and p.true_edges().shape == (p.graph.n_edges,)

    # Llama, 4 query heads over 2 key/value heads, k/v edges per query head (the default):
    # a0.h3<q,k,v> read input (3); a1.h0<q,k,v> read input and a0.h3 (6); the logits read input,
    # a0.h3, a1.h0 (3). 12 in all; nothing into a0.h2 (a0.h3's group mate) or the MLPs.
    p = plant("llama", ["a1.h0", "a0.h3"], 0.0, seed=0, n_layers=2, n_rows=2)
    expected = {f"input->a0.h3<{s}>" for s in "qkv"}
    expected |= {f"{src}->a1.h0<{s}>" for src in ("input", "a0.h3") for s in "qkv"}
    expected |= {f"{src}->logits" for src in ("input", "a0.h3", "a1.h0")}
    assert set(p.true_edge_names()) == expected and len(expected) == 12
    # Grouped: a0.h3's k and v come from a0.kv1, a1.h0's from a1.kv0 (the same count).
    g = Graph.from_adapter(p.model.adapter, kv_edges="grouped")
    expected = {"input->a0.h3<q>", "input->a0.kv1<k>", "input->a0.kv1<v>"}
    expected |= {f"{src}->{r}" for src in ("input", "a0.h3") for r in ("a1.h0<q>", "a1.kv0<k>", "a1.kv0<v>")}
    expected |= {f"{src}->logits" for src in ("input", "a0.h3", "a1.h0")}
    assert {n for n, t in zip(g.edge_names, p.true_edges(g)) if t} == expected and len(expected) == 12

    # NeoX, parallel residual: m0 reads only the input (3 + 1 + 3 = 7).
    p = plant("neox", ["a0.h0", "m0"], 0.0, seed=0, n_layers=1, n_rows=2)
    assert set(p.true_edge_names()) == {"input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "input->m0",
                                        "input->logits", "a0.h0->logits", "m0->logits"}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_exact_sees_nothing_outside_the_circuit_at_noise_0(family):
    p = plant(family, None, 0.0, seed=0, n_rows=8)
    scores = score_edges(Setup(p.model, p.task, get_metric("logit_diff"), batch_size=8), "exact").numpy()
    truth = p.true_edges()
    assert np.abs(scores[~truth]).max() <= 1e-5
    assert np.abs(scores[truth]).min() > 1e-4  # every true edge carries some effect
    assert (np.abs(scores[truth]) > 0.01 * np.abs(scores).max()).mean() >= 0.8  # most of them clearly
    assert roc_auc(np.abs(scores), truth) == 1.0


def test_a_seed_fixes_everything():
    state = torch.get_rng_state()
    a, b = plant("llama", None, 0.1, seed=3, n_rows=4), plant("llama", None, 0.1, seed=3, n_rows=4)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is left alone
    assert a.circuit == b.circuit and a.task.clean_ids == b.task.clean_ids and a.task.answer_ids == b.task.answer_ids
    sa, sb = a.model.hf_model.state_dict(), b.model.hf_model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = plant("llama", None, 0.1, seed=4, n_rows=4)
    assert c.task.clean_ids != a.task.clean_ids
    assert not torch.equal(c.model.hf_model.lm_head.weight, a.model.hf_model.lm_head.weight)


def test_saved_planted_model_loads_for_the_cli(tmp_path):
    p = plant("gpt2", None, 0.01, seed=0, n_layers=2, n_rows=4)
    out = p.save(tmp_path / "planted")
    lm = load_model(str(out / "model"), device="cpu")
    task = load_task(out / "task.jsonl", tokenizer=lm.tokenizer, vocab_size=lm.vocab_size)
    assert task.clean_ids == p.task.clean_ids and task.answer_ids == p.task.answer_ids
    ids = torch.tensor(p.task.clean_ids)
    with torch.no_grad():
        torch.testing.assert_close(lm.hf_model(input_ids=ids).logits, p.model.hf_model(input_ids=ids).logits)
    truth = json.loads((out / "truth.json").read_text())
    assert truth["true_edges"] == p.true_edge_names() and truth["circuit"] == list(p.circuit)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"circuit": ["a0.h1", "b2"]}, "unknown circuit node 'b2'"),
    ({"circuit": ["a0.x1"]}, "unknown circuit node 'a0.x1'"),
    ({"circuit": ["a0.h01"]}, "unknown circuit node 'a0.h01'"),
    ({"circuit": ["a5.h0"]}, "layer 5 is out of range; this model has layers 0..2"),
    ({"circuit": ["a0.h4"]}, "head 4 is out of range; this model has heads 0..3"),
    ({"circuit": ["m3"]}, "layer 3 is out of range"),
    ({"circuit": []}, "circuit is empty"),
    ({"circuit": "a0.h1"}, "circuit must be a list"),
    ({"noise": -0.1}, "noise must be a finite number >= 0"),
    ({"noise": float("nan")}, "noise must be a finite number >= 0"),
    ({"family_or_config": "bert"}, "unknown family 'bert'"),
])
def test_bad_input_is_a_one_line_user_error(kwargs, fragment):
    args = {"family_or_config": "gpt2", "circuit": None, "noise": 0.0, "seed": 0, **kwargs}
    with pytest.raises(UserError) as info:
        plant(**args)
    message = str(info.value)
    assert fragment in message and "\n" not in message


def test_a_graph_of_another_model_is_refused():
    from discovery import Graph

    p = plant("gpt2", ["a0.h0"], 0.0, seed=0, n_layers=1, n_rows=2)
    with pytest.raises(UserError, match="is not this model's"):
        p.true_edges(Graph(2, 4))
