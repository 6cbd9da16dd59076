"""The table of built-in tasks (TASKS, by name) and what is looked up in it: a task's spec, a task built
for a tokenizer, sample rows, the vocabulary of every template and word list."""

from __future__ import annotations

import re

from ..core.errors import TaskError
from ..model.tasks import Task
from . import agreement, capitals, docstring, greater_than, induction, ioi
from .base import BuiltinTask, Lexicon, build, check_size, pieces

TASKS: dict[str, BuiltinTask] = {m.TASK.name: m.TASK for m in (ioi, greater_than, induction, docstring, agreement,
                                                              capitals)}


def get_task(name: str) -> BuiltinTask:
    if name not in TASKS:
        raise TaskError(f"unknown built-in task '{name}'; choose one of {', '.join(TASKS)}")
    return TASKS[name]


def build_task(name: str, tokenizer=None, vocab_size: int | None = None, n: int = 200, seed: int = 0) -> Task:
    """The task `name` with `n` rows from `seed`, tokenized for this model (same rows for the same inputs)."""
    return build(get_task(name), tokenizer=tokenizer, vocab_size=vocab_size, n=n, seed=seed)


def sample_rows(name: str, n: int = 3, seed: int = 0, tokenizer=None, vocab_size: int | None = None) -> list[dict]:
    """Rows as they would appear in a JSONL task file (text rows, or token rows for token tasks)."""
    spec = get_task(name)
    check_size(name, n, seed)
    return [ex.row() for ex in spec.examples(n, seed, Lexicon(tokenizer, vocab_size))]


def vocabulary() -> list[str]:
    """Every word piece the built-in templates and word lists use, sorted: a toy tokenizer over these
    can build every text task."""
    words = set()
    for spec in TASKS.values():
        for text in spec.words():
            words.update(pieces(_strip_slots(text)))
    return sorted(words)


def _strip_slots(text: str) -> str:
    return re.sub(r"\{\w+\}", " ", text)
