"""Built-in tasks: prompt pairs generated from templates and word lists shipped with circuitry.

    from discovery.task_library import build_task
    task = build_task("ioi", tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=200, seed=0)

Each task knows its clean and corrupted construction (as in the paper it comes from) and its default
metric. Built for one model's tokenizer, the word lists keep only words that are single tokens for
it; a template that does not tokenize cleanly is refused with a TaskError that says why."""

from __future__ import annotations

from .base import BuiltinTask, Example, Lexicon
from .catalog import TASKS, build_task, get_task, sample_rows, vocabulary
from .load import as_task, load_task

__all__ = ["TASKS", "BuiltinTask", "Example", "Lexicon", "get_task", "build_task", "sample_rows", "vocabulary", "load_task",
           "as_task"]
