"""Built-in tasks: sizes, determinism, single-token checks, and that clean and corrupted differ in
exactly the place each construction says."""

import json

import pytest
import toks

from discovery import TaskError, load_task
from discovery.task_library import TASKS, build_task, sample_rows, vocabulary
from discovery.task_library.words import CAPITALS, NAMES, NOUN_PAIRS

TEXT_TASKS = [n for n, s in TASKS.items() if not s.token_level]


@pytest.fixture(scope="module")
def wl():
    return toks.wordlevel()


def diff_positions(task, i):
    return [p for p, (a, b) in enumerate(zip(task.clean_ids[i], task.corrupted_ids[i])) if a != b]


def ids(tok, *words):
    return [tok.convert_tokens_to_ids(w) for w in words]


def test_every_task_builds_with_its_size_and_metric(wl):
    for name, spec in TASKS.items():
        task = build_task(name, wl, len(wl), n=17, seed=3)
        assert len(task) == 17 and task.name == name and task.metric == spec.metric
        assert task.source == f"builtin:{name}?n=17&seed=3"
        assert all(len(c) == len(k) for c, k in zip(task.clean_ids, task.corrupted_ids))


def test_same_seed_same_rows_other_seed_other_rows(wl):
    for name in TASKS:
        a, b, c = (build_task(name, wl, len(wl), n=10, seed=s) for s in (0, 0, 1))
        assert a.clean_ids == b.clean_ids and a.content_hash == b.content_hash
        assert a.clean_ids != c.clean_ids and a.content_hash != c.content_hash


def test_ioi_corrupts_only_the_second_subject(wl):
    task = build_task("ioi", wl, len(wl), n=40, seed=0)
    name_ids = set(ids(wl, *NAMES))
    for i in range(len(task)):
        clean, (io,), (s,) = task.clean_ids[i], task.answer_ids[i], task.wrong_ids[i]
        [p] = diff_positions(task, i)
        assert clean[p] == s and clean.count(s) == 2 and clean.count(io) == 1
        third = task.corrupted_ids[i][p]
        assert third in name_ids and third not in (io, s)
    # both name orders occur: IO first (ABBA) and S first (BABA)
    orders = {task.clean_ids[i].index(task.answer_ids[i][0]) < task.clean_ids[i].index(task.wrong_ids[i][0])
              for i in range(len(task))}
    assert orders == {True, False}


def test_greater_than_corrupts_only_the_start_year(wl):
    task = build_task("greater-than", wl, len(wl), n=30, seed=0)
    year = {wl.convert_tokens_to_ids(f"{y:02d}"): y for y in range(100)}
    for i in range(len(task)):
        [p] = diff_positions(task, i)
        yy = year[task.clean_ids[i][p]]
        assert task.clean_ids[i][p - 1] == wl.convert_tokens_to_ids("17")
        assert year[task.corrupted_ids[i][p]] == 1
        assert sorted(year[a] for a in task.answer_ids[i]) == list(range(yy + 1, 100))
        assert sorted(year[w] for w in task.wrong_ids[i]) == list(range(0, yy + 1))


def test_induction_resamples_exactly_the_first_copy(wl):
    task = build_task("induction", wl, len(wl), n=30, seed=0)
    special = set(wl.all_special_ids)
    for i in range(len(task)):
        clean, corrupted = task.clean_ids[i], task.corrupted_ids[i]
        seg = 10
        k = len(clean) - seg
        assert diff_positions(task, i) == list(range(seg))  # every token of the first copy, nothing else
        assert clean[seg:] == clean[:k] and corrupted[seg:] == clean[:k]
        assert task.answer_ids[i] == [clean[k]] and task.wrong_ids[i] == [corrupted[k]]
        assert not special & set(clean + corrupted)
    # token rows without a tokenizer draw from the model's vocabulary size
    bare = build_task("induction", None, 50, n=5, seed=0)
    assert max(max(r) for r in bare.clean_ids) < 50


def test_docstring_renames_only_the_signature(wl):
    task = build_task("docstring", wl, len(wl), n=20, seed=0)
    comma, close = ids(wl, ",", "):")
    for i in range(len(task)):
        clean = task.clean_ids[i]
        p_close = clean.index(close)
        arg_positions = [p + 1 for p in range(p_close) if clean[p] == comma]  # the names after each comma
        assert diff_positions(task, i) == arg_positions and len(arg_positions) == 4
        args = [clean[p] for p in arg_positions]
        assert task.answer_ids[i] == [args[2]]
        assert sorted(task.wrong_ids[i]) == sorted([args[0], args[1], args[3]])
        assert clean[-1] == wl.convert_tokens_to_ids("param")


def test_agreement_flips_only_the_subject_number(wl):
    task = build_task("subject-verb-agreement", wl, len(wl), n=20, seed=0)
    number = {wl.convert_tokens_to_ids(w): n for pair in NOUN_PAIRS for n, w in enumerate(pair)}
    verbs = {wl.convert_tokens_to_ids(w): n for pair in (("is", "are"), ("was", "were"), ("has", "have"))
             for n, w in enumerate(pair)}
    for i in range(len(task)):
        [p] = diff_positions(task, i)
        assert p == 1
        n_clean = number[task.clean_ids[i][p]]
        assert number[task.corrupted_ids[i][p]] == 1 - n_clean
        assert verbs[task.answer_ids[i][0]] == n_clean and verbs[task.wrong_ids[i][0]] == 1 - n_clean


def test_capitals_swap_only_the_country(wl):
    task = build_task("capital-country", wl, len(wl), n=20, seed=0)
    capital_of = dict(zip(ids(wl, *(c for c, _ in CAPITALS)), ids(wl, *(k for _, k in CAPITALS))))
    for i in range(len(task)):
        [p] = diff_positions(task, i)
        assert task.answer_ids[i] == [capital_of[task.clean_ids[i][p]]]
        assert task.wrong_ids[i] == [capital_of[task.corrupted_ids[i][p]]]


def test_words_that_are_not_single_tokens_are_never_used():
    dropped = NAMES[:30]
    tok = toks.wordlevel(drop=dropped)
    task = build_task("ioi", tok, len(tok), n=60, seed=0)
    used = {t for row in task.clean_ids + task.corrupted_ids for t in row}
    assert tok.unk_token_id not in used
    assert set(ids(tok, *NAMES[30:])) & used  # the remaining names are used


def test_too_few_single_token_words_is_a_clear_error():
    tok = toks.wordlevel(drop=NAMES[2:])
    with pytest.raises(TaskError, match=r"task 'ioi': only 2 of 40 names are single tokens .* 3 are needed"):
        build_task("ioi", tok, len(tok), n=5)


def test_template_word_missing_from_the_vocabulary_is_a_clear_error():
    tok = toks.wordlevel(drop=["lasted", "started"])
    with pytest.raises(TaskError, match=r"template words \['(lasted|started)'\] are not in this tokenizer's vocabulary"):
        build_task("greater-than", tok, len(tok), n=5)


def test_bpe_tokenizer_leading_space_tokens():
    tok = toks.bpe()
    task = build_task("ioi", tok, len(tok), n=10, seed=0)
    for i in range(len(task)):
        io = tok.convert_ids_to_tokens(task.answer_ids[i])[0]
        assert io.startswith("Ġ") and io[1:] in NAMES  # " Mary", the token that follows "to"
    with pytest.raises(TaskError, match="does not split years"):  # the toy BPE merges whole years
        build_task("greater-than", tok, len(tok), n=5)


def test_text_task_without_tokenizer_is_a_clear_error():
    with pytest.raises(TaskError, match="written in text and this model has no tokenizer"):
        build_task("ioi", None, 100)


def test_bad_size_and_unknown_task():
    with pytest.raises(TaskError, match="--n must be a positive integer"):
        build_task("ioi", toks.wordlevel(), n=0)
    with pytest.raises(TaskError, match="unknown built-in task 'iio'; choose one of ioi"):
        build_task("iio")


def test_shown_rows_are_a_task_file_with_the_same_tokens(tmp_path, wl):
    for name in TASKS:
        rows = sample_rows(name, n=8, seed=2, tokenizer=wl, vocab_size=len(wl))
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        from_file = load_task(path, tokenizer=wl, vocab_size=len(wl))
        built = build_task(name, wl, len(wl), n=8, seed=2)
        assert (from_file.clean_ids, from_file.corrupted_ids, from_file.answer_ids, from_file.wrong_ids) == (
            built.clean_ids, built.corrupted_ids, built.answer_ids, built.wrong_ids)


def test_vocabulary_covers_every_text_task():
    v = vocabulary()
    assert len(v) == len(set(v)) and v == sorted(v)
    for name in ("Mary", "Paris", "17", "32", "param", '"""', "lasted"):
        assert name in v


# --------------------------------------------------------------------------------------- command line

import tiny  # noqa: E402

from discovery.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory, wl):
    d = tmp_path_factory.mktemp("wordmodel")
    tiny.build("gpt2", vocab_size=len(wl)).save_pretrained(d)
    wl.save_pretrained(d)
    return d


def _cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_lists_and_shows_tasks(capsys, toy_dir):
    code, out, _ = _cli(capsys, "tasks")
    assert code == 0 and [line.split()[0] for line in out.splitlines()] == list(TASKS)
    code, out, _ = _cli(capsys, "tasks", "show", "ioi", "--n", "3", "--seed", "4")
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == sample_rows("ioi", 3, 4)
    code, out, _ = _cli(capsys, "tasks", "show", "induction", "--n", "2", "--model", toy_dir)
    assert code == 0 and all("clean_ids" in json.loads(line) for line in out.splitlines())
    code, out, err = _cli(capsys, "tasks", "show", "induction")
    assert code == 2 and out == "" and err.count("\n") == 1 and "give a model (--model)" in err


def test_cli_discover_and_evaluate_a_builtin_task(capsys, toy_dir, tmp_path):
    out_path = tmp_path / "c.json"
    code, out, err = _cli(capsys, "discover", "--model", toy_dir, "--task", "greater-than", "--n", "6", "--seed", "1",
                          "--method", "eap", "--top-n", "20", "--no-curve", "--quiet", "--out", out_path)
    assert code == 0, err
    circuit = json.loads(out_path.read_text())
    assert circuit["task"]["name"] == "greater-than" and circuit["task"]["rows"] == 6
    assert circuit["task"]["source"] == "builtin:greater-than?n=6&seed=1"
    assert circuit["method"]["params"]["metric"] == "prob_diff"  # the task's own metric by default
    code, out, err = _cli(capsys, "evaluate", "--model", toy_dir, "--task", "greater-than", "--n", "6", "--seed", "1",
                          "--circuit", out_path, "--json", "--quiet")
    assert code == 0 and json.loads(out)["same_task"] is True
    code, out, err = _cli(capsys, "evaluate", "--model", toy_dir, "--task", "greater-than", "--n", "6", "--seed", "2",
                          "--circuit", out_path, "--json", "--quiet")
    assert code == 0 and json.loads(out)["same_task"] is False  # other rows: a held-out evaluation


def test_cli_task_errors_are_one_line(capsys, toy_dir):
    code, out, err = _cli(capsys, "discover", "--model", toy_dir, "--task", "iio", "--out", "x.json", "--quiet")
    assert code == 2 and err.count("\n") == 1 and "neither a file nor a built-in task; built-in tasks: ioi" in err
    code, out, err = _cli(capsys, "discover", "--model", toy_dir, "--task", "ioi", "--n", "0", "--out", "x.json",
                          "--quiet")
    assert code == 2 and err.count("\n") == 1 and "--n must be between 1 and 10000 (CIRCUITRY_MAX_ROWS) (got 0)" in err
