"""A task by name or by file, wherever the Python API takes a task (`discovery.load_task`, `discover`,
`evaluate`, `Setup`).

    load_task("ioi", tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=200, seed=0)  # built in
    load_task("my_task.jsonl", tokenizer=model.tokenizer, vocab_size=model.vocab_size)      # a JSONL file

A string or path that names an existing file is that JSONL file (a file wins over a built-in task of the
same name, as on the command line); otherwise a built-in task name (`TASKS`) builds that task for the
tokenizer with `n` rows from `seed`; anything else is a TaskError that names both possibilities. `n` and
`seed` apply to built-in tasks only: given with a file they are refused (a file's rows are its own)."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import TaskError
from ..model.tasks import Task
from ..model.tasks import load_task as load_task_file
from .base import build
from .catalog import TASKS

DEFAULT_ROWS = 200


def load_task(source: str | os.PathLike, tokenizer=None, vocab_size: int | None = None, name: str | None = None,
              *, n: int | None = None, seed: int | None = None) -> Task:
    """A JSONL task file, or a built-in task by name (`n` rows, default 200, from `seed`, default 0)."""
    if isinstance(source, Task):
        raise TaskError("load_task takes a file path or a built-in task name; this is already a Task")
    if not isinstance(source, (str, os.PathLike)):
        raise TaskError(f"a task is a file path or a built-in task name, not {type(source).__name__}")
    path = Path(source)
    if path.is_file() or str(source) not in TASKS:
        if path.is_file() and (n is not None or seed is not None):
            raise TaskError(f"n and seed choose rows of a built-in task; '{source}' is a file, whose rows are its own "
                            "(drop n and seed)")
        if not path.exists() and os.sep not in str(source) and not str(source).endswith(".jsonl"):
            raise TaskError(f"task '{source}' is neither a file nor a built-in task; built-in tasks: {', '.join(TASKS)}")
        return load_task_file(source, tokenizer=tokenizer, vocab_size=vocab_size, name=name)
    task = build(TASKS[str(source)], tokenizer=tokenizer, vocab_size=vocab_size,
                 n=DEFAULT_ROWS if n is None else n, seed=0 if seed is None else seed)
    return task if name is None else _renamed(task, name)


def as_task(task, model=None, *, n: int | None = None, seed: int | None = None) -> Task:
    """`task` as a Task: a Task as it is; a file path or a built-in name loaded for `model`'s tokenizer."""
    if isinstance(task, Task):
        if n is not None or seed is not None:
            raise TaskError("n and seed choose rows of a built-in task by name; this task is already built")
        return task
    if model is None:
        raise TaskError("a task given by name or path needs the model it is built for")
    return load_task(task, tokenizer=model.tokenizer, vocab_size=model.vocab_size, n=n, seed=seed)


def _renamed(task: Task, name: str) -> Task:
    from dataclasses import replace
    return replace(task, name=name)


__all__ = ["load_task", "as_task", "DEFAULT_ROWS"]
