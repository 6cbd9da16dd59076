"""What every built-in task shares: examples in text (or token) form, the tokenizer checks, and
turning examples into a Task for one model's tokenizer."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace

from ..core.errors import TaskError
from ..model.tasks import Task, task_from_rows


@dataclass(frozen=True)
class Example:
    """One row. Answers are continuations of the prompt exactly as they would follow it in text
    (usually with a leading space: " Mary"); token tasks give ids instead of text."""
    clean: str
    corrupted: str
    answer: list[str]
    wrong: list[str]
    ids: tuple[list[int], list[int], list[int], list[int]] | None = None  # clean, corrupted, answer, wrong

    def row(self) -> dict:
        """The row as it would appear in a JSONL task file (text rows; token rows for token tasks)."""
        if self.ids is not None:
            c, k, a, w = self.ids
            return {"clean_ids": c, "corrupted_ids": k, "answer_id": a, "wrong_id": w}
        return {"clean": self.clean, "corrupted": self.corrupted, "answer": list(self.answer), "wrong": list(self.wrong)}


def pieces(text: str) -> list[str]:
    """Word pieces as the toy tokenizers split text: runs of word characters or of punctuation, with
    every pair of digits on its own (so "1732" is "17" "32")."""
    out = []
    for run in re.findall(r"\w+|[^\w\s]+", text):
        out.extend(p for p in re.split(r"(\d\d)", run) if p)
    return out


class Lexicon:
    """Which words are single tokens for a tokenizer, and the token ids of prompt continuations.
    Without a tokenizer (showing sample rows) every word is accepted."""

    def __init__(self, tokenizer=None, vocab_size: int | None = None):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._cache: dict[str, int | None] = {}

    def encode(self, text: str, special: bool = False) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=special)["input_ids"]]

    def bad_id(self, i: int) -> bool:
        unk = getattr(self.tokenizer, "unk_token_id", None)
        return (unk is not None and i == unk) or (self.vocab_size is not None and i >= self.vocab_size)

    def word_id(self, word: str, space: bool = True) -> int | None:
        """The id of `word` following a word in running text, or None if that is not one known token."""
        if self.tokenizer is None:
            return None
        key = (" " if space else "") + word
        if key not in self._cache:
            ctx = self.encode("the")
            full = self.encode("the" + key)
            ok = len(full) == len(ctx) + 1 and full[:len(ctx)] == ctx and not self.bad_id(full[-1])
            self._cache[key] = full[-1] if ok else None
        return self._cache[key]

    def keep(self, words, need: int, task: str, what: str, space: bool = True) -> list:
        """The words (or tuples of words) that are all single tokens; a TaskError if fewer than `need`."""
        if self.tokenizer is None:
            return list(words)
        single = lambda w: all(self.word_id(x, space) is not None for x in (w if isinstance(w, tuple) else (w,)))  # noqa: E731
        kept = [w for w in words if single(w)]
        if len(kept) < need:
            dropped = [w for w in words if not single(w)][:6]
            raise TaskError(f"task '{task}': only {len(kept)} of {len(words)} {what} are single tokens for this "
                            f"tokenizer, {need} are needed (not single tokens: {dropped}); this task cannot be built "
                            f"for this model, give a custom JSONL task instead")
        return kept


@dataclass(frozen=True)
class BuiltinTask:
    """A task generated from templates: subclasses define `examples` and the words they use."""
    name: str
    description: str
    metric: str = "logit_diff"
    reference: str = ""
    token_level: bool = False
    templates: tuple[str, ...] = field(default=())

    def words(self) -> list[str]:
        """Every text the task's prompts and answers are made of (for the toy tokenizer's vocabulary)."""
        raise NotImplementedError

    def examples(self, n: int, seed: int, lex: Lexicon) -> list[Example]:
        raise NotImplementedError

    def _rng(self, seed: int) -> random.Random:
        return random.Random(f"{self.name}:{seed}")  # one stream per task and seed, independent of others


def check_size(name: str, n, seed) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise TaskError(f"task '{name}': --n must be a positive integer (got {n!r})")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TaskError(f"task '{name}': --seed must be an integer (got {seed!r})")


def _continuation(lex: Lexicon, task: str, prompt: str, prompt_ids: list[int], text: str) -> int:
    """Token id of `text` right after `prompt`; it must be exactly one known token."""
    full = lex.encode(prompt + text, special=True)
    if full[:len(prompt_ids)] != prompt_ids or len(full) != len(prompt_ids) + 1 or lex.bad_id(full[-1]):
        raise TaskError(f"task '{task}': the answer {text!r} after {prompt[-40:]!r} is not a single token for this "
                        f"tokenizer; this task cannot be built for this model, give a custom JSONL task instead")
    return full[-1]


def _unknown_words(lex: Lexicon, text: str) -> list[str]:
    return [p for p in pieces(text) if any(lex.bad_id(i) for i in lex.encode(" " + p))]


def encode_examples(spec: BuiltinTask, examples: list[Example], lex: Lexicon) -> list[dict]:
    """Token rows for the model's tokenizer, with every check that makes patching meaningful."""
    rows = []
    for ex in examples:
        if ex.ids is not None:
            rows.append(ex.row())
            continue
        clean, corrupted = lex.encode(ex.clean, special=True), lex.encode(ex.corrupted, special=True)
        for text, ids in ((ex.clean, clean), (ex.corrupted, corrupted)):
            if any(lex.bad_id(i) for i in ids):
                raise TaskError(f"task '{spec.name}': template words {_unknown_words(lex, text)} are not in this "
                                f"tokenizer's vocabulary (prompt {text!r}); this task cannot be built for this model")
        if len(clean) != len(corrupted):
            raise TaskError(f"task '{spec.name}': clean and corrupted prompts tokenize to {len(clean)} and "
                            f"{len(corrupted)} tokens ({ex.clean!r} / {ex.corrupted!r}); patching needs equal lengths, "
                            f"so this task cannot be built for this tokenizer")
        rows.append({"clean_ids": clean, "corrupted_ids": corrupted,
                     "answer_id": [_continuation(lex, spec.name, ex.clean, clean, a) for a in ex.answer],
                     "wrong_id": [_continuation(lex, spec.name, ex.clean, clean, w) for w in ex.wrong]})
    return rows


def build(spec: BuiltinTask, tokenizer=None, vocab_size: int | None = None, n: int = 200, seed: int = 0) -> Task:
    check_size(spec.name, n, seed)
    if tokenizer is None and not spec.token_level:
        raise TaskError(f"task '{spec.name}' is written in text and this model has no tokenizer; "
                        f"use a model directory with its tokenizer files, or a token-row task")
    lex = Lexicon(tokenizer, vocab_size)
    rows = encode_examples(spec, spec.examples(n, seed, lex), lex)
    task = task_from_rows(rows, vocab_size=vocab_size, name=spec.name, source=f"builtin:{spec.name}?n={n}&seed={seed}")
    return replace(task, metric=spec.metric)
