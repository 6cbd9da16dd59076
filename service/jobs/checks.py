"""Checks of a job request made at submission, before it is queued (the API and watches): the model
is one this server may load, the task's rows have the right shape and size."""

from __future__ import annotations

from discovery.errors import UserError

from ..config import Settings
from ..problems import Unprocessable
from .spec import TaskSpec


class _StubTokenizer:
    """Stands in for a model's tokenizer when checking text rows before a job is queued: every
    structural check runs; tokenization itself (single-token answers) is checked when the job runs."""

    def __call__(self, text):
        return {"input_ids": [0]}

    def encode(self, text, add_special_tokens=False):
        return [0]


def validate_task(task: TaskSpec, settings: Settings) -> None:
    from discovery.tasks import check_equal_lengths, task_from_rows

    if task.builtin is not None:
        if task.n > settings.max_rows:
            raise Unprocessable(f"task.n is {task.n}; this server allows at most {settings.max_rows} rows per job")
        return
    rows = task.rows or []
    if len(rows) > settings.max_rows:
        raise Unprocessable(f"task.rows has {len(rows)} rows; this server allows at most {settings.max_rows}")
    try:
        built = task_from_rows(rows, tokenizer=_StubTokenizer(), name=task.name)
        if built.kind == "tokens":
            longest = max(len(r) for r in built.clean_ids + built.corrupted_ids)
            if longest > settings.max_tokens_per_row:
                raise Unprocessable(f"a task row has {longest} tokens; this server allows at most "
                                    f"{settings.max_tokens_per_row}")
            check_equal_lengths(built)
    except UserError as exc:
        raise Unprocessable(f"task.rows: {exc}") from None
