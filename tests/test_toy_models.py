"""The trained toy models shipped in discovery/toy/models/: tokenizer, accuracy, ground truth,
checkpoints, `toy:` names and the training script's determinism. No full training here."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from discovery import Graph, UserError, load_model
from discovery.model.adapters import TOY_MODELS
from discovery.task_library import build_task, vocabulary
from discovery.toy.ground_truth import attention_patterns, head_scores, repeated_sequences
from discovery.toy.train import induction_accuracy, ioi_accuracy, train

INDUCTION = Path(TOY_MODELS) / "induction"
IOI = Path(TOY_MODELS) / "ioi"
TEST_SEED = 4242  # not a training seed (0) nor the held-out seed of the model cards (1000003)

INDUCTION_MIN_ACCURACY = 0.9  # top-1 on the second copy of a repeated segment
INDUCTION_TASK_MIN = 0.95  # built-in induction task: logit(S[k]) > logit(S'[k])
IOI_MIN_ACCURACY = 0.9  # logit(IO) > logit(S)


@pytest.fixture(scope="module")
def induction():
    return load_model("toy:induction", device="cpu")


@pytest.fixture(scope="module")
def gt():
    return json.loads((INDUCTION / "ground_truth.json").read_text())


@pytest.mark.parametrize("model_dir", [INDUCTION, IOI], ids=["induction", "ioi"])
def test_tokenizer_round_trips_every_vocabulary_word(model_dir):
    tok = AutoTokenizer.from_pretrained(model_dir)
    words = vocabulary()
    assert len(tok) == len(words) + 3 and tok.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "<unk>", "<bos>"]
    for w in words:
        ids = tok(w, add_special_tokens=False)["input_ids"]
        assert ids == [tok.convert_tokens_to_ids(w)] and ids[0] > 2, w
        assert tok.decode(ids) == w
    sentence = "When Mary and John went to the store, John gave a drink to Mary in 1732."
    ids = tok(sentence)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert tok.convert_ids_to_tokens(ids[-4:]) == ["in", "17", "32", "."]
    assert tok.decode(ids, skip_special_tokens=True) == \
        "When Mary and John went to the store , John gave a drink to Mary in 17 32 ."
    assert tok("Zyxwv", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_induction_model_is_attention_only_and_loads_with_transformers():
    hf = AutoModelForCausalLM.from_pretrained(INDUCTION)
    assert hf.config.model_type == "gpt2" and hf.config.n_layer == 2 and hf.config.n_head == 4
    for block in hf.transformer.h:
        assert not block.mlp.c_proj.weight.any() and not block.mlp.c_proj.bias.any()


def test_induction_model_predicts_repeated_segments(induction):
    for pair_frac in (0.8, 0.0):  # as in training; segments of 3-10 tokens only
        acc = induction_accuracy(induction.hf_model, induction.vocab_size, n=256, seed=TEST_SEED,
                                 seq_len=induction.config.n_positions, max_segment=10, pair_frac=pair_frac)
        assert acc > INDUCTION_MIN_ACCURACY, (pair_frac, acc)
    # the built-in induction task: S[k] after S + S[:k], and not after S' + S[:k], where nothing is repeated
    task = build_task("induction", tokenizer=induction.tokenizer, vocab_size=induction.vocab_size, n=100,
                      seed=TEST_SEED)
    length = max(map(len, task.clean_ids))
    ids = torch.tensor([r + [0] * (length - len(r)) for r in task.clean_ids])
    last = torch.tensor([len(r) - 1 for r in task.clean_ids])
    with torch.no_grad():
        clean = induction.hf_model(ids).logits[torch.arange(100), last]
        corrupted_ids = torch.tensor([r + [0] * (length - len(r)) for r in task.corrupted_ids])
        corrupted = induction.hf_model(corrupted_ids).logits[torch.arange(100), last]
    ans = torch.tensor([a[0] for a in task.answer_ids])
    wrong = torch.tensor([w[0] for w in task.wrong_ids])
    rows = torch.arange(100)
    assert (clean[rows, ans] > clean[rows, wrong]).float().mean() > INDUCTION_TASK_MIN
    # without the first copy of S (corrupted prompt) S[k] is no longer predicted
    assert (clean.argmax(-1) == ans).float().mean() > INDUCTION_MIN_ACCURACY
    assert (corrupted.argmax(-1) == ans).float().mean() < 0.05


def test_ground_truth_file_matches_fresh_head_scores(induction, gt):
    sc = gt["scores"]
    fresh = head_scores(induction, n=sc["n"], seed=sc["seed"], segment=sc["segment"])
    for key in ("prev_token", "current_token", "induction"):
        torch.testing.assert_close(torch.tensor(fresh[key]), torch.tensor(sc[key]), atol=1e-4, rtol=0)
    th, heads = gt["thresholds"], gt["heads"]
    assert heads["prev_token"] == [f"a0.h{h}" for h, s in enumerate(sc["prev_token"][0]) if s >= th["prev_token"]]
    assert heads["induction"] == [f"a1.h{h}" for h, s in enumerate(sc["induction"][1]) if s >= th["induction"]]
    assert heads["prev_token"] and heads["current_token"] and heads["induction"]
    p, c, i = heads["prev_token"][0], heads["current_token"][0], heads["induction"][0]
    assert {f"input->{p}<v>", f"{p}->{i}<k>", f"input->{c}<v>", f"{c}->{i}<v>", f"input->{i}<v>",
            f"{i}->logits"} <= set(gt["edges"])
    assert not any(e.endswith("<q>") or "->m" in e or e.startswith("m") for e in gt["edges"])
    assert set(gt["edges"]) <= set(Graph.from_adapter(induction.adapter).edge_names)


def test_heads_do_what_they_are_named_for(induction, gt):
    ids = repeated_sequences(induction.vocab_size, 64, TEST_SEED, segment=10)
    atts = attention_patterns(induction.hf_model, ids)
    t = ids.shape[1]
    head = lambda name: int(name.split(".h")[1])  # noqa: E731
    for name in gt["heads"]["prev_token"]:
        top = atts[0][:, head(name), 2:].argmax(-1)  # [batch, query]: the most attended key
        assert (top == torch.arange(2, t) - 1).float().mean() > 0.9, name
    for name in gt["heads"]["current_token"]:
        top = atts[0][:, head(name), 1:].argmax(-1)
        assert (top == torch.arange(1, t)).float().mean() > 0.9, name
    fresh = head_scores(induction, n=64, seed=TEST_SEED, segment=10)
    for name in gt["heads"]["induction"]:
        top = atts[1][:, head(name), 11:].argmax(-1)  # second copy of S -> the token after its first occurrence
        assert (top == torch.arange(11, t) - 9).float().mean() > 0.9, name
        assert fresh["induction"][1][head(name)] > gt["thresholds"]["induction"]
    # layer 0 sees no previous-token information, so none of its heads scores as an induction head
    assert max(fresh["induction"][0]) < gt["thresholds"]["induction"]


def test_checkpoints_load_by_revision_and_show_the_circuit_forming():
    revisions = sorted(os.listdir(INDUCTION / "checkpoints"))
    assert len(revisions) >= 6 and all(r.startswith("step-") for r in revisions)
    first = load_model("toy:induction", revision=revisions[0], device="cpu")
    last = load_model("toy:induction", revision=revisions[-1], device="cpu")
    assert first.revision == revisions[0] and first.name == "toy:induction"
    early, final = (max(head_scores(m, n=64, seed=TEST_SEED, segment=10)["induction"][1]) for m in (first, last))
    assert final > early + 0.3, (early, final)


def test_ioi_model_prefers_the_indirect_object():
    lm = load_model("toy:ioi", device="cpu")
    acc = ioi_accuracy(lm.hf_model, lm.tokenizer, n=300, seed=TEST_SEED)
    assert acc["io_beats_s"] > IOI_MIN_ACCURACY, acc
    assert acc["top1"] > IOI_MIN_ACCURACY, acc


def test_toy_names_resolve_and_unknown_ones_list_the_available(induction):
    assert induction.name == "toy:induction" and induction.revision is None
    assert Path(induction.hf_model.name_or_path).resolve() == INDUCTION.resolve()
    with pytest.raises(UserError, match=r"unknown toy model 'toy:nope'; available: toy:induction, toy:ioi, toy:llama-induction$"):
        load_model("toy:nope")
    with pytest.raises(UserError, match=r"has no revision 'step-9'; available: step-\d{6}, .*step-\d{6}$") as err:
        load_model("toy:induction", revision="step-9")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="toy model 'toy:ioi' has no revision 'main'; available: none$"):
        load_model("toy:ioi", revision="main")


@pytest.mark.parametrize("kind", ["induction", "ioi", "llama-induction"])
def test_training_is_deterministic(tmp_path, kind):
    def weights(out, seed):
        train(kind, out, seed=seed, steps=16, evaluate=False)
        return load_file(out / "model.safetensors")

    a, b, c = weights(tmp_path / "a", 0), weights(tmp_path / "b", 0), weights(tmp_path / "c", 1)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    assert loaded.config.model_type == ("llama" if kind == "llama-induction" else "gpt2")
    if kind == "llama-induction":
        assert loaded.config.num_key_value_heads == 2 and loaded.config.num_attention_heads == 4
    if kind == "induction":
        assert len(list((tmp_path / "a" / "checkpoints").iterdir())) >= 6
