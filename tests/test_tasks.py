"""Task loading, validation and batching, with a local word-level tokenizer (no downloads)."""

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from discovery.core.errors import TaskError, UserError
from discovery.model.tasks import Batch, Task, check_equal_lengths, iter_batches, load_task, task_from_rows

WORDS = "[UNK] [PAD] <s> When Mary and John went to the store , gave a drink Smith Bob".split()
V = {w: i for i, w in enumerate(WORDS)}


@pytest.fixture(scope="module")
def tok():
    t = Tokenizer(models.WordLevel(V, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    # Prepend BOS like Llama tokenizers do, to check prompts use default special-token handling.
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", V["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>")


def write(tmp_path, rows, name="t.jsonl"):
    """Rows may be dicts (dumped as JSON) or raw strings (written verbatim)."""
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return p


TEXT = {"clean": "When Mary and John went", "corrupted": "When Bob and John went", "answer": "Mary", "wrong": "John"}
TOKS = {"clean_ids": [3, 4, 5], "corrupted_ids": [3, 16, 5], "answer_id": 4, "wrong_id": 6}


def ids(s):
    return [V[w] for w in s.split()]


# ------------------------------------------------------------------------------------ good input


def test_text_rows(tmp_path, tok):
    p = write(tmp_path, [TEXT, "", {**TEXT, "answer": ["Mary", "Bob"], "wrong": ["John"], "meta": {"x": 1}}])
    t = load_task(p, tokenizer=tok)
    assert (t.name, t.source, t.kind, len(t)) == ("t", str(p), "text", 2)
    assert t.clean_ids[0] == [V["<s>"]] + ids("When Mary and John went")
    assert t.corrupted_ids[0] == [V["<s>"]] + ids("When Bob and John went")
    assert t.answer_ids == [[V["Mary"]], [V["Mary"], V["Bob"]]]
    assert t.wrong_ids == [[V["John"]], [V["John"]]]
    assert load_task(p, tokenizer=tok, name="ioi").name == "ioi"


def test_token_rows(tmp_path):
    p = write(tmp_path, [TOKS, {**TOKS, "answer_id": [4, 16], "wrong_id": [6]}])
    t = load_task(p, vocab_size=len(V))
    assert t.kind == "tokens"
    assert t.clean_ids == [[3, 4, 5]] * 2 and t.corrupted_ids == [[3, 16, 5]] * 2
    assert t.answer_ids == [[4], [4, 16]] and t.wrong_ids == [[6], [6]]


def test_task_from_rows_matches_load(tmp_path, tok):
    t = task_from_rows([TEXT], tokenizer=tok)
    assert (t.name, t.source) == ("inline", "<inline>")
    assert t.clean_ids == load_task(write(tmp_path, [TEXT]), tokenizer=tok).clean_ids
    assert t.content_hash == task_from_rows([dict(reversed(TEXT.items()))], tokenizer=tok).content_hash
    assert t.content_hash != task_from_rows([{**TEXT, "answer": "Bob"}], tokenizer=tok).content_hash
    with pytest.raises(TaskError, match="row 2: field 'answer' is missing"):
        task_from_rows([TEXT, {k: v for k, v in TEXT.items() if k != "answer"}], tokenizer=tok)


def test_content_hash_changes_with_file(tmp_path):
    p = write(tmp_path, [TOKS])
    h1 = load_task(p).content_hash
    assert load_task(p).content_hash == h1 and len(h1) == 64
    write(tmp_path, [{**TOKS, "wrong_id": 7}])
    assert load_task(p).content_hash != h1


def test_subset():
    t = task_from_rows([{**TOKS, "answer_id": i} for i in range(5)])
    s = t.subset([3, 1])
    assert s.answer_ids == [[3], [1]] and len(s) == 2
    assert (s.name, s.content_hash, s.kind) == (t.name, t.content_hash, t.kind)
    s.clean_ids[0].append(9)  # a subset must not alias the parent's lists
    assert t.clean_ids[3] == [3, 4, 5]
    with pytest.raises(UserError, match="out of range"):
        t.subset([5])


def test_iter_batches_pads_independently():
    rows = [
        {"clean_ids": [1, 2, 3], "corrupted_ids": [4], "answer_id": [7, 8], "wrong_id": 9},
        {"clean_ids": [5], "corrupted_ids": [6, 7, 8, 9], "answer_id": 10, "wrong_id": [11, 12, 13]},
        {"clean_ids": [2, 2], "corrupted_ids": [3, 3], "answer_id": 1, "wrong_id": 2},
    ]
    b1, b2 = list(iter_batches(task_from_rows(rows), batch_size=2, pad_id=99))
    assert isinstance(b1, Batch) and b1.rows == [0, 1] and b2.rows == [2]
    assert b1.clean.tolist() == [[1, 2, 3], [5, 99, 99]]
    assert b1.corrupted.tolist() == [[4, 99, 99, 99], [6, 7, 8, 9]]
    assert b1.clean_last.tolist() == [2, 0] and b1.corrupted_last.tolist() == [0, 3]
    assert b1.answers.tolist() == [[7, 8], [10, 0]] and b1.answer_mask.tolist() == [[True, True], [True, False]]
    assert b1.wrongs.tolist() == [[9, 0, 0], [11, 12, 13]]
    assert b1.wrong_mask.tolist() == [[True, False, False], [True, True, True]]
    assert b1.clean.dtype == torch.long and b1.answer_mask.dtype == torch.bool
    assert b2.clean.tolist() == [[2, 2]] and b2.clean_last.tolist() == [1]
    moved = b1.to("cpu")
    assert moved.rows == b1.rows and torch.equal(moved.wrongs, b1.wrongs)


def test_iter_batches_bad_size():
    with pytest.raises(UserError, match="batch size"):
        next(iter_batches(task_from_rows([TOKS]), batch_size=0))


def test_check_equal_lengths():
    check_equal_lengths(task_from_rows([TOKS]))
    t = task_from_rows([TOKS, TOKS, {**TOKS, "corrupted_ids": [1, 2, 3, 4]}])
    with pytest.raises(TaskError, match=r"^row 3: clean has 3 tokens but corrupted has 4; .*--intervention zero/mean"):
        check_equal_lengths(t)


# ------------------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(TaskError, match="task file '.*nope.jsonl' not found"):
        load_task(tmp_path / "nope.jsonl")


def test_empty_file(tmp_path):
    with pytest.raises(TaskError, match="has no rows"):
        load_task(write(tmp_path, ["", "  "]))
    with pytest.raises(TaskError, match="has no rows"):
        task_from_rows([])


def bad(tmp_path, rows, tokenizer=None, vocab_size=None):
    """Load rows expecting a TaskError; return its message (must be one line)."""
    with pytest.raises(TaskError) as e:
        load_task(write(tmp_path, rows), tokenizer=tokenizer, vocab_size=vocab_size)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_invalid_json(tmp_path):
    msg = bad(tmp_path, [TOKS, "", TOKS, '{"clean_ids": [1,'])
    assert msg.startswith("row 4: not valid JSON (")


def test_row_not_object(tmp_path):
    assert bad(tmp_path, [TOKS, "[1, 2]"]).startswith("row 2: must be a JSON object")


@pytest.mark.parametrize("field", ["clean", "corrupted", "answer", "wrong"])
def test_missing_text_field(tmp_path, tok, field):
    row = {k: v for k, v in TEXT.items() if k != field}
    assert bad(tmp_path, [TEXT, row], tok) == f"row 2: field '{field}' is missing; add it to the row"


@pytest.mark.parametrize("field", ["clean_ids", "corrupted_ids", "answer_id", "wrong_id"])
def test_missing_token_field(tmp_path, field):
    row = {k: v for k, v in TOKS.items() if k != field}
    assert bad(tmp_path, [row]).startswith(f"row 1: field '{field}' is missing")


@pytest.mark.parametrize("field,value,expect", [
    ("clean", 3, "a string"),
    ("answer", ["Mary", 4], "a string or a list of strings"),
    ("wrong", None, "a string or a list of strings"),
])
def test_wrong_type_text(tmp_path, tok, field, value, expect):
    assert bad(tmp_path, [TEXT, TEXT, {**TEXT, field: value}], tok).startswith(
        f"row 3: field '{field}' must be {expect}")


@pytest.mark.parametrize("field,value,expect", [
    ("clean_ids", [1, "2"], "a list of integers"),
    ("corrupted_ids", "1 2", "a list of integers"),
    ("answer_id", 1.5, "an integer or a list of integers"),
    ("wrong_id", True, "an integer or a list of integers"),
])
def test_wrong_type_tokens(tmp_path, field, value, expect):
    assert bad(tmp_path, [TOKS, {**TOKS, field: value}]).startswith(f"row 2: field '{field}' must be {expect}")


def test_empty_prompt(tmp_path, tok):
    assert bad(tmp_path, [{**TEXT, "corrupted": "  "}], tok).startswith("row 1: field 'corrupted' is an empty prompt")
    assert bad(tmp_path, [TOKS, {**TOKS, "clean_ids": []}]).startswith("row 2: field 'clean_ids' is empty")


def test_empty_answer_list(tmp_path, tok):
    assert bad(tmp_path, [{**TEXT, "answer": []}], tok).startswith("row 1: field 'answer' is an empty list")
    assert bad(tmp_path, [TOKS, {**TOKS, "wrong_id": []}]).startswith("row 2: field 'wrong_id' is an empty list")


def test_answer_not_single_token(tmp_path, tok):
    msg = bad(tmp_path, [TEXT, TEXT, {**TEXT, "answer": ["Mary", "Mary Smith"]}], tok)
    assert msg == ("row 3: field 'answer': 'Mary Smith' is 2 tokens for this tokenizer (['Mary', 'Smith']); "
                   "answers must be single tokens")
    assert bad(tmp_path, [{**TEXT, "wrong": ""}], tok).startswith("row 1: field 'wrong': '' is 0 tokens")


def test_ids_out_of_vocab(tmp_path):
    msg = bad(tmp_path, [TOKS, TOKS, TOKS, {**TOKS, "clean_ids": [1, 5003]}], vocab_size=5000)
    assert msg == "row 4: field 'clean_ids': id 5003 is outside the model's vocabulary (size 5000)"
    assert bad(tmp_path, [{**TOKS, "answer_id": [4, 17]}], vocab_size=17).startswith("row 1: field 'answer_id': id 17")
    assert bad(tmp_path, [{**TOKS, "wrong_id": -1}]).startswith("row 1: field 'wrong_id': id -1 is negative")


def test_text_rows_without_tokenizer(tmp_path):
    assert bad(tmp_path, [TEXT]) == ("row 1: text rows need a tokenizer, but this model has none; "
                                     "give token rows (clean_ids, corrupted_ids, answer_id, wrong_id)")


def test_mixed_kinds(tmp_path, tok):
    msg = bad(tmp_path, [TEXT, TEXT, TOKS, TEXT], tok)
    assert msg.startswith("row 3: field 'clean_ids'") and "may not be mixed" in msg
    msg = bad(tmp_path, [{**TOKS, "clean": "When Mary"}], tok)
    assert msg.startswith("row 1: field 'clean_ids'") and "not both" in msg


def test_invalid_utf8(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_bytes(json.dumps(TOKS).encode() + b"\n\xff\xfe\n")
    with pytest.raises(TaskError, match="^row 2: not valid UTF-8"):
        load_task(p)
