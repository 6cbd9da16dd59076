"""The labeling stage offline: evidence against independent computations, the heuristic labels on the
shipped induction model and on planted models, the labeled file, the CLI and the Neuronpedia export."""

from discovery.core.circuit import SCHEMA_VERSION
import json

import pytest
import torch
from labeling_helpers import INDUCTION_EDGES, hand_circuit, induction_setup

from discovery.core.circuit import Circuit
from discovery.cli import main
from discovery.toy.ground_truth import head_scores, repeated_sequences
from discovery.toy.planted import plant
from labeling import EvidenceConfig, LabeledCircuit, collect_evidence, label_circuit, to_neuronpedia
from labeling.evidence import PatternAccumulator, repeated_batch
from labeling.heuristic import label_head
from labeling.schema import (AnswerAttention, DataRef, DirectLogits, HeadEvidence, LabelRecord, LLMLabelAnswer,
                             OVCopying)
from labeling.scoring import pair_predicate
from discovery import load_model
from discovery.task_library import build_task

SMALL = EvidenceConfig(seed=0, n_repeated=32, max_task_rows=32, ov_tokens=256)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def induction():
    return induction_setup(n=32, seed=7)


@pytest.fixture(scope="module")
def labeled(induction):
    model, task, circuit = induction
    comps = [f"a{layer}.h{h}" for layer in range(2) for h in range(4)] + ["m0", "m1"]
    return label_circuit(circuit, model, task, components=comps, evidence=SMALL, scorer="evidence_agreement")


# --- evidence against independent computations ------------------------------------------------------

def test_pattern_scores_on_a_hand_made_pattern():
    # one prompt, tokens 5 7 5 7; each query row of attention written by hand
    ids = torch.tensor([[5, 7, 5, 7]])
    a = torch.zeros(1, 1, 4, 4)
    a[0, 0, 0] = torch.tensor([1.0, 0, 0, 0])
    a[0, 0, 1] = torch.tensor([0.5, 0.5, 0, 0])
    a[0, 0, 2] = torch.tensor([0.2, 0.6, 0.2, 0])  # earlier copy of 5 at 0, the token after it at 1
    a[0, 0, 3] = torch.tensor([0.1, 0.3, 0.4, 0.2])  # earlier copy of 7 at 1, after it at 2
    acc = PatternAccumulator(1, 1)
    acc.add([a], ids, torch.tensor([4]))
    s = acc.scores(0, 0)
    assert s["previous_token"] == pytest.approx((0.6 + 0.4) / 2)  # queries 2, 3
    assert s["self_attention"] == pytest.approx((0.5 + 0.2 + 0.2) / 3)  # queries 1..3
    assert s["sink"] == pytest.approx((0.5 + 0.2 + 0.1) / 3)
    assert s["duplicate_token"] == pytest.approx((0.2 + 0.3) / 2)  # only queries 2 and 3 have an earlier copy
    assert s["induction"] == pytest.approx((0.6 + 0.4) / 2)
    assert s["n_queries"]["duplicate_token"] == 2 and s["n_queries"]["previous_token"] == 2


def test_repeated_scores_equal_the_ground_truth_module(induction):
    """Token-based definitions (labeling) == positional ones (discovery/toy/ground_truth.py) on <bos> S S."""
    model, task, circuit = induction
    cfg = EvidenceConfig(seed=12345, n_repeated=24)
    assert torch.equal(repeated_batch(model, cfg), repeated_sequences(model.vocab_size, 24, 12345))
    ev = collect_evidence(model, task, circuit, ["a0.h3", "a1.h2", "a0.h1"], cfg).evidence
    gt = head_scores(model, n=24, seed=12345)
    for node, layer, head in (("a0.h3", 0, 3), ("a1.h2", 1, 2), ("a0.h1", 0, 1)):
        rep = ev[node].patterns[0]
        assert rep.data.source == "repeated_random_tokens" and rep.data.seed == 12345
        assert rep.previous_token == pytest.approx(gt["prev_token"][layer][head], abs=1e-5)
        assert rep.induction == pytest.approx(gt["induction"][layer][head], abs=1e-5)
        assert rep.self_attention == pytest.approx(gt["current_token"][layer][head], abs=1e-5)


def test_ov_copying_matches_a_direct_computation(induction):
    """The OV copying score recomputed from the GPT-2 modules themselves (ln_1, c_attn, c_proj, ln_f, lm_head)."""
    model, task, circuit = induction
    ev = collect_evidence(model, task, circuit, ["a1.h0"], SMALL).evidence["a1.h0"]
    hf = model.hf_model
    g = torch.Generator().manual_seed(SMALL.seed)
    pool = torch.arange(3, model.vocab_size)
    sample = pool[torch.randperm(len(pool), generator=g)[:SMALL.ov_tokens]].sort().values
    block, d, dh = hf.transformer.h[1], hf.config.n_embd, hf.config.n_embd // hf.config.n_head
    with torch.no_grad():
        x = block.ln_1(hf.transformer.wte.weight[sample])
        v = (x @ block.attn.c_attn.weight[:, 2 * d:] + block.attn.c_attn.bias[2 * d:])[:, 0:dh]  # head 0
        out = v @ block.attn.c_proj.weight[0:dh]
        logits = hf.lm_head(hf.transformer.ln_f(out))[:, sample]
    rank = (logits > logits.diagonal()[:, None]).sum(-1)
    assert ev.ov.copying == pytest.approx(float((rank < SMALL.ov_k).float().mean()))
    assert ev.ov.n_tokens == SMALL.ov_tokens and ev.ov.chance == pytest.approx(SMALL.ov_k / SMALL.ov_tokens)


def test_evidence_is_deterministic_and_records_its_data(induction):
    model, task, circuit = induction
    a = collect_evidence(model, task, circuit, ["a0.h3", "m1"], SMALL)
    b = collect_evidence(model, task, circuit, ["a0.h3", "m1"], SMALL)
    assert {k: v.model_dump() for k, v in a.evidence.items()} == {k: v.model_dump() for k, v in b.evidence.items()}
    ev = a.evidence["a0.h3"]
    assert ev.patterns[1].data.source == task.source and ev.patterns[1].data.content_hash == task.content_hash
    assert ev.patterns[1].data.split == "evidence" and a.heldout.split == "held_out"
    assert ev.ov.data.seed == SMALL.seed and ev.patterns[0].data.segment == SMALL.segment
    # a previous-token head's strongest pairs are one step apart
    assert all(p.query_pos - p.key_pos == 1 for p in ev.top_pairs)
    # importance from the circuit file: a0.h3 reads input<v>, writes a1.h0<k> and a1.h1<k>
    assert ev.importance.in_circuit_in == 1 and ev.importance.in_circuit_out == 2


# --- heuristic labels ------------------------------------------------------------------------------

def test_heuristic_names_the_induction_mechanism(labeled):
    by = {r.component: r for r in labeled.labels}
    assert by["a0.h3"].role_tags == ["previous_token"] and by["a0.h3"].status == "ok"
    assert by["a0.h3"].label == "Previous-token head"
    for h in range(4):
        rec = by[f"a1.h{h}"]
        assert "induction" in rec.role_tags and rec.label == "Induction head" and rec.confidence > 0.9
        assert "copies tokens" in rec.description
    assert "previous_token" not in by["a0.h1"].role_tags and by["a0.h1"].role_tags == ["positional"]
    for rec in labeled.labels:
        assert len(rec.label.split()) <= 8 and 1 <= rec.description.count(".") + 1


def test_honest_labels_when_no_role_fits(labeled):
    by = {r.component: r for r in labeled.labels}
    for node in ("a0.h0", "a0.h2"):  # attend mostly to <bos> (about 0.44): below every threshold
        rec = by[node]
        assert rec.role_tags == ["other"] and rec.status == "unverified" and rec.confidence == 0.0
        assert rec.description.startswith("No tested attention pattern reaches its threshold")
    for node in ("m0", "m1"):  # the toy model's MLPs write exactly nothing
        rec = by[node]
        assert rec.evidence.silent and rec.label == "Silent MLP: writes nothing" and rec.status == "unverified"
        assert "No held-out evidence_agreement score" in rec.status_reason
        assert rec.scores["evidence_agreement"].value is None


def test_held_out_agreement_beats_the_random_label(labeled):
    by = {r.component: r for r in labeled.labels}
    for node in ("a0.h3", "a0.h1", "a1.h0", "a1.h1", "a1.h2", "a1.h3"):
        s = by[node].scores["evidence_agreement"]
        assert s.metric == "roc_auc" and s.n_positive == s.n_negative == SMALL.n_heldout
        assert s.data.split == "held_out"
        assert s.value >= s.random_baseline + 0.2, (node, s)
    assert by["a0.h3"].scores["evidence_agreement"].value == 1.0
    assert by["a0.h0"].scores["evidence_agreement"].value == 0.5  # "other" predicts nothing


def test_labeled_circuit_keeps_everything_and_edges_carry_labels(induction, labeled):
    model, task, circuit = induction
    before = circuit.model_dump()
    again = label_circuit(circuit, model, task, components=["a0.h3"], evidence=SMALL, scorer="evidence_agreement")
    assert circuit.model_dump() == before  # the input is never mutated
    assert labeled.schema_version == SCHEMA_VERSION and again is not circuit
    assert labeled.model_dump(include=set(Circuit.model_fields) - {"schema_version"}) == \
        circuit.model_dump(exclude={"schema_version"})
    e = next(e for e in labeled.edge_labels if e.name == "a0.h3->a1.h0<k>")
    assert (e.slot, e.source_label, e.target_label) == ("k", "Previous-token head", "Induction head")
    assert {e.name for e in labeled.edge_labels} == set(INDUCTION_EDGES)
    assert next(e for e in labeled.edge_labels if e.name == "a1.h0->logits").target_label == "output logits"


def test_default_components_are_the_circuit_nodes(induction):
    model, task, circuit = induction
    out = label_circuit(circuit, model, task, evidence=SMALL, scorer="evidence_agreement")
    assert [r.component for r in out.labels] == [n.id for n in circuit.nodes if n.in_circuit
                                                and n.kind in ("attention", "mlp")]
    assert out.labeling.backend == "heuristic" and out.labeling.scorer == "evidence_agreement"
    assert out.labeling.usage.calls == 0


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_planted_models(family):
    """At noise 0 the non-circuit components write nothing (planted.py): their labels must say so; the
    circuit's random-weight heads have no role by construction and must not get one."""
    p = plant(family, ["a0.h1", "a1.h2", "m1"], 0.0, seed=0, n_layers=2, n_rows=16)
    circuit = hand_circuit(p.model, p.task, p.true_edge_names())
    comps = [f"a{layer}.h{h}" for layer in range(2) for h in range(4)] + ["m0", "m1"]
    out = label_circuit(circuit, p.model, p.task, components=comps, evidence=SMALL, scorer="evidence_agreement")
    by = {r.component: r for r in out.labels}
    for node in comps:
        rec = by[node]
        silent = rec.evidence.ov.silent if rec.kind == "head" else rec.evidence.silent
        assert silent == (node not in p.circuit), node
        assert rec.role_tags == ["other"] and rec.status == "unverified", (node, rec.label)
    assert by["m1"].scores["evidence_agreement"].value > by["m1"].scores["evidence_agreement"].random_baseline


# --- schema, file, CLI, export ---------------------------------------------------------------------

def test_label_schema_limits():
    with pytest.raises(ValueError):
        LLMLabelAnswer(label="one two three four five six seven eight nine", description="Fine.",
                       role_tags=["other"], confidence=0.5)
    with pytest.raises(ValueError):
        LLMLabelAnswer(label="ok", description="One. Two. Three. Four.", role_tags=["other"], confidence=0.5)
    with pytest.raises(ValueError):
        LLMLabelAnswer(label="ok", description="Fine.", role_tags=["made_up_role"], confidence=0.5)
    a = LLMLabelAnswer(label="Copy head", description="Copies.", role_tags=["copy", "Induction"], confidence=1)
    assert a.role_tags == ["name_mover", "induction"]


def test_load_reads_plain_and_labeled_files(tmp_path, induction, labeled):
    model, task, circuit = induction
    circuit.save(tmp_path / "plain.json")
    labeled.save(tmp_path / "labeled.json")
    plain = LabeledCircuit.load(tmp_path / "plain.json")
    assert plain.schema_version == Circuit.model_fields["schema_version"].default and plain.labels == []
    back = LabeledCircuit.load(tmp_path / "labeled.json")
    assert back.schema_version == SCHEMA_VERSION and back.model_dump() == labeled.model_dump()
    assert isinstance(back.labels[0], LabelRecord)
    assert Circuit.load(tmp_path / "labeled.json").edges == circuit.edges  # a 1.x reader still reads it


def test_cli_label(tmp_path, induction, capsys):
    model, task, circuit = induction
    circuit.save(tmp_path / "c.json")
    code = main(["label", str(tmp_path / "c.json"), "--out", str(tmp_path / "l.json"), "--components", "a0.h3,a1.h0",
                 "--device", "cpu", "--neuronpedia", str(tmp_path / "np.json"), "--scorer", "evidence_agreement"])
    out = capsys.readouterr().out
    assert code == 0 and out.startswith("labeled 2 components with heuristic (2 ok)") and "-> " in out
    data = json.loads((tmp_path / "l.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION and [r["role_tags"] for r in data["labels"]] == [["previous_token"],
                                                                                             ["induction"]]
    graph = json.loads((tmp_path / "np.json").read_text())
    assert {"metadata", "qParams", "nodes", "links"} <= set(graph)


def test_cli_user_errors(tmp_path, induction, capsys, monkeypatch):
    model, task, circuit = induction
    assert main(["label", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.json")]) == 2
    assert "not found" in capsys.readouterr().err
    circuit.save(tmp_path / "c.json")
    monkeypatch.delenv("CIRCUITRY_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("CIRCUITRY_LLM_MODEL", raising=False)
    assert main(["label", str(tmp_path / "c.json"), "--out", str(tmp_path / "x.json"), "--backend", "openai"]) == 2
    err = capsys.readouterr().err
    assert "CIRCUITRY_LLM_BASE_URL" in err and err.count("\n") == 1 and "Traceback" not in err
    assert main(["label", str(tmp_path / "c.json"), "--out", str(tmp_path / "x.json"), "--components", "a9.h0",
                 "--device", "cpu"]) == 2
    assert "a9.h0" in capsys.readouterr().err


def test_neuronpedia_export(labeled, induction):
    from discovery.model.example_row import representative_row

    model, task, _ = induction  # the hand circuit has no representative row; discover() writes one
    example = representative_row(model, task)
    labeled = labeled.model_copy(update={"task": labeled.task.model_copy(update={"example": example})})
    g = to_neuronpedia(labeled)
    assert g["metadata"]["prompt_tokens"] == example.tokens and g["metadata"]["scan"] == "toy-induction"
    nodes = {n["node_id"]: n for n in g["nodes"]}
    assert nodes["a0.h3"]["clerp"] == "Previous-token head" and nodes["a1.h2"]["clerp"] == "Induction head"
    assert nodes["input"]["feature_type"] == "embedding" and nodes["logits"]["is_target_logit"]
    assert nodes["a1.h0"]["layer"] == "1" and nodes["input"]["layer"] == "E"
    assert len(g["links"]) == len(INDUCTION_EDGES)
    assert all(link["source"] in nodes and link["target"] in nodes for link in g["links"])
    json.dumps(g)  # plain JSON


# --- heads that read the answer (or the wrong answer) at the prediction position -------------------

def test_answer_positions_by_hand():
    from discovery.model.tasks import Batch
    from labeling.evidence import answer_positions

    ids = torch.tensor([[0, 5, 6, 7, 6, 9], [0, 8, 8, 8, 8, 8]])
    batch = Batch(rows=[0, 1], clean=ids, corrupted=ids, clean_last=torch.tensor([5, 5]),
                  corrupted_last=torch.tensor([5, 5]), answers=torch.tensor([[5], [1]]),
                  answer_mask=torch.tensor([[True], [True]]), wrongs=torch.tensor([[6], [2]]),
                  wrong_mask=torch.tensor([[True], [True]]))
    to_answer, to_wrong, present = answer_positions(batch)
    assert to_answer[0].tolist() == [0, 1, 0, 0, 0, 0] and to_wrong[0].tolist() == [0, 0, 1, 0, 1, 0]
    assert present.tolist() == [True, False]  # row 1 holds neither token: it does not count


def _head_ev(to_answer, to_wrong, copying, suppression, direct):
    data = DataRef(source="builtin:ioi?n=8&seed=0", split="evidence", rows=4)
    return HeadEvidence(ov=OVCopying(data=data, copying=copying, suppression=suppression, k=5, n_tokens=420,
                                     chance=5 / 420),
                        answer_attention=AnswerAttention(data=data, to_answer=to_answer, to_wrong=to_wrong, rows=4),
                        logits=DirectLogits(data=data, answer_minus_wrong=direct))


@pytest.mark.parametrize("ev, tags", [
    (_head_ev(0.0, 0.95, 0.0, 0.12, +3.0), ["copy_suppression"]),  # reads the wrong name, suppresses it: helps
    (_head_ev(0.8, 0.1, 0.2, 0.0, +2.0), ["name_mover"]),  # reads the answer, copies it: helps
    (_head_ev(0.1, 0.7, 0.2, 0.0, -2.0), ["name_mover"]),  # reads the wrong name, copies it: hurts
    (_head_ev(0.0, 0.95, 0.0, 0.12, -3.0), ["other"]),  # suppressing what it reads cannot lower answer - wrong
    (_head_ev(0.0, 0.95, 0.0, 0.03, +3.0), ["other"]),  # suppression near chance (0.012): no explanation
    (_head_ev(0.2, 0.2, 0.0, 0.12, +3.0), ["other"]),  # attends to neither
])
def test_answer_reading_rules(ev, tags):
    rec = label_head("a1.h0", ev, max_direct=3.0)
    assert rec.role_tags == tags, rec.description
    if tags != ["other"]:
        assert rec.status == "ok" and len(rec.label.split()) <= 8 and "attends to earlier occurrences" in rec.description


def test_answer_reading_pair_predicate():
    ids = [0, 5, 6, 7, 6, 9]
    assert pair_predicate("copy_suppression", ids, 5, 2, answers=(5,), wrongs=(6,)) == 1.0
    assert pair_predicate("name_mover", ids, 5, 1, answers=(5,), wrongs=(6,)) == 1.0
    assert pair_predicate("name_mover", ids, 5, 3, answers=(5,), wrongs=(6,)) == 0.0
    assert pair_predicate("name_mover", ids, 4, 1, answers=(5,), wrongs=(6,)) == 0.0  # not the prediction position


def test_ioi_fixed_offset_heads():
    """toy:ioi: a0.h3 and a2.h1 attend from the last token to the subject's second copy (S2), which
    sits 4 tokens back in every prompt, and as much to that position of the corrupted prompt (where a
    third name sits): a positional pattern, not a copy-suppression head reading the name (the old
    labeler called both `copy_suppression`, status ok). The attention shares are checked against the
    HF model's own attention weights on the clean and the corrupted prompts."""
    from discovery.toy.ground_truth import attention_patterns
    from discovery.model.tasks import iter_batches

    model = load_model("toy:ioi", device="cpu")
    task = build_task("ioi", tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=16, seed=1)
    circuit = hand_circuit(model, task, ["input->a0.h3<v>", "a0.h3->logits", "input->a2.h1<v>", "a2.h1->logits"])
    out = label_circuit(circuit, model, task, components=["a0.h3", "a2.h1"], evidence=SMALL,
                        scorer="evidence_agreement")
    by = {r.component: r for r in out.labels}
    ev_rows = list(range(0, len(task), 2))  # the evidence rows (even), as labeling splits them
    for node, layer, head in (("a0.h3", 0, 3), ("a2.h1", 2, 1)):
        rec = by[node]
        assert rec.role_tags == ["positional"] and rec.label == "Fixed-offset head: 4 tokens back", rec.description
        assert "copy" not in rec.label.lower() and "suppress" not in rec.label.lower()
        clean, corrupted, offset = [], [], []
        for batch in iter_batches(task.subset(ev_rows), 16):
            att = attention_patterns(model.hf_model, batch.clean)[layer][:, head]
            att_c = attention_patterns(model.hf_model, batch.corrupted)[layer][:, head]
            for r in range(len(batch.rows)):
                last = int(batch.clean_last[r])
                wrong = {int(t) for t in batch.wrongs[r][batch.wrong_mask[r]]}
                s2 = max(k for k in range(last) if int(batch.clean[r, k]) in wrong)
                clean.append(float(att[r, last, s2]))
                corrupted.append(float(att_c[r, int(batch.corrupted_last[r]), s2]))
                offset.append(last - s2)
        ioi = rec.evidence.ioi
        assert ioi.to_s2 == pytest.approx(sum(clean) / len(clean), abs=1e-4) and ioi.to_s2 > 0.9
        assert ioi.to_s2_corrupted == pytest.approx(sum(corrupted) / len(corrupted), abs=1e-4)
        assert set(offset) == {4} and ioi.offset == 4
